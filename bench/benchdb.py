"""What the Django benches share: their own database (made and migrated if missing) and a queue nobody consumes,
emptied afterwards. Each bench sets DATABASE_URL to its database before importing Django."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SERVER_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def ensure_database(name: str) -> None:
    import psycopg

    with psycopg.connect(SERVER_URL, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"')
    subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=ROOT, check=True)


def purge_queue(queue: str) -> None:
    """The runs' messages wait in Redis for a worker that never comes: drop them."""
    from dashboard.celery import app

    with app.connection_for_write() as conn:
        conn.default_channel.queue_purge(queue)
