"""Optuna studies of sweeps, in the project's own PostgreSQL: one study per phase that prunes or searches.

Optuna's RDBStorage (SQLAlchemy over psycopg 3, the driver Django uses) keeps its tables (studies, trials, their
params and intermediate values) beside Django's in the same database. It creates them itself the first time a
storage is opened on a database, so `manage.py migrate` and the tests' per-session databases need nothing extra;
Django's migrations and flushes never touch them. Several processes (the web process creating a sweep, GPU workers
watching members, the cpu worker advancing) open the same study at once: the first creation of the tables is
serialised by a PostgreSQL advisory lock, and the study itself by create_study(load_if_exists=True), which turns the
loser of a race on the study's unique name into a load.
"""
from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

import optuna
import sqlalchemy
from django.db import connections
from sqlalchemy.pool import NullPool

DRIVER = "postgresql+psycopg"
# pg_advisory_lock's key for building the storage (Optuna's CREATE TABLEs race on a fresh database otherwise).
TABLES_LOCK = 0x74756E65  # "tune"

_storages: dict[str, optuna.storages.RDBStorage] = {}
_lock = threading.Lock()


def study_name(sweep_id: int, phase_index: int) -> str:
    return f"tuneboard-sweep-{sweep_id}-phase-{phase_index}"


def storage_url(db: Mapping[str, Any]) -> str:
    """SQLAlchemy's URL for a Django database settings dict (PostgreSQL only: the project's one database)."""
    if "postgresql" not in db.get("ENGINE", ""):
        raise ValueError(f"sweeps keep their Optuna studies in PostgreSQL; the database engine is {db.get('ENGINE')}")
    timeout = (db.get("OPTIONS") or {}).get("connect_timeout")
    return sqlalchemy.engine.URL.create(
        DRIVER, username=db.get("USER") or None, password=db.get("PASSWORD") or None, host=db.get("HOST") or None,
        port=int(db["PORT"]) if db.get("PORT") else None, database=db["NAME"],
        query={"connect_timeout": str(timeout)} if timeout else {},
    ).render_as_string(hide_password=False)


def storage() -> optuna.storages.RDBStorage:
    """The storage on Django's default database as this process uses it now (the test database in tests), one per
    process. NullPool: no connection stays open between calls, so a worker holds none idle and a test database can
    be dropped at the end of its session."""
    url = storage_url(connections["default"].settings_dict)
    with _lock:
        if url not in _storages:
            _storages[url] = _open(url)
        return _storages[url]


def _open(url: str) -> optuna.storages.RDBStorage:
    engine = sqlalchemy.create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": TABLES_LOCK})
            try:
                return optuna.storages.RDBStorage(url, engine_kwargs={"poolclass": NullPool})
            finally:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": TABLES_LOCK})
    finally:
        engine.dispose()


def open_study(name: str, *, pruner: optuna.pruners.BasePruner | None = None,
               sampler: optuna.samplers.BaseSampler | None = None) -> optuna.Study:
    """The study of that name (minimising eval loss), created by whichever process asks first."""
    return optuna.create_study(study_name=name, storage=storage(), direction="minimize", pruner=pruner,
                               sampler=sampler, load_if_exists=True)
