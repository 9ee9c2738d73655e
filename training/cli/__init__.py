"""The `tuneboard` command line: a client of the REST API (/api/v1/) and the run websocket, over HTTP only (no
Django here, so it runs on any machine with the package installed)."""
