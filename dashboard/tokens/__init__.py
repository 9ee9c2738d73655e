"""Personal API tokens: made and revoked on the user's settings page (or revoked in the admin), checked for the REST
API (training/api/authentication.py) and the websockets (websocket.py)."""
