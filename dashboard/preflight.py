"""Start-up checks for the services Tuneboard needs: a clear sentence on how to get each one, not a traceback."""
from __future__ import annotations

import sys

from django.conf import settings

POSTGRES_HELP = (
    "Start PostgreSQL (Debian: `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`; "
    "Docker: `docker compose up -d db`), or point DATABASE_URL at one (postgres://user@host:5432/dbname)."
)
REDIS_HELP = (
    "Start Redis (`redis-server --daemonize yes`; Docker: `docker compose up -d redis`), "
    "or point REDIS_URL at one (redis://host:6379/0)."
)


def postgres_problem() -> str | None:
    import psycopg

    db = settings.DATABASES["default"]
    where = f"{db['HOST'] or 'localhost'}:{db['PORT'] or 5432}, database {db['NAME']!r}"
    try:
        psycopg.connect(dbname=db["NAME"], user=db["USER"] or None, password=db["PASSWORD"] or None,
                        host=db["HOST"] or None, port=db["PORT"] or None, connect_timeout=3).close()
    except psycopg.OperationalError as exc:
        reason = " ".join(line.strip() for line in str(exc).splitlines() if line.strip()).rstrip(".")
        reason = reason or type(exc).__name__
        if "does not exist" in reason:
            return (f"PostgreSQL at {where}: {reason}. Create it (`createdb -h {db['HOST'] or 'localhost'} "
                    f"-U {db['USER'] or 'postgres'} {db['NAME']}`) and run `python manage.py migrate`.")
        return f"PostgreSQL is not reachable at {where}: {reason}. {POSTGRES_HELP}"
    return None


def redis_problem() -> str | None:
    import redis

    try:
        redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=3, socket_timeout=3).ping()
    except redis.RedisError as exc:
        return f"Redis is not reachable at {settings.REDIS_URL}: {str(exc).rstrip('.')}. {REDIS_HELP}"
    return None


def service_problems() -> list[str]:
    return [problem for problem in (postgres_problem(), redis_problem()) if problem]


def exit_unless_services_up(program: str) -> None:
    problems = service_problems()
    if problems:
        print(f"{program} cannot start:", *(f"  - {p}" for p in problems), sep="\n", file=sys.stderr)
        raise SystemExit(2)
