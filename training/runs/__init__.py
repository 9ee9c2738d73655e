"""Runs: creating, queueing and the one status transition (services), training one in a child process (execution,
process), watching it for symptoms (watcher), what differs from its base (differences), the form and the pages."""
