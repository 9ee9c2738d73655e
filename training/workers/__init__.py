"""Workers: the heartbeat a Celery worker process keeps (alive, GPUs, the lost-run check), their services and page."""
