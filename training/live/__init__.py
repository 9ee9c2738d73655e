"""Live updates: the one way worker code tells browsers (send), and the websockets that forward it (consumers)."""
