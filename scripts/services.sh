#!/usr/bin/env bash
# Make sure PostgreSQL and Redis answer on 127.0.0.1, starting the local ones if they are installed but down.
# Prints how to get one when it is missing; exits non-zero so `make` stops with that message, not a traceback.
set -u
PG_HOST=${PGHOST:-127.0.0.1}; PG_PORT=${PGPORT:-5432}
REDIS_PORT=${REDIS_PORT:-6379}

pg_up() { pg_isready -q -h "$PG_HOST" -p "$PG_PORT" 2>/dev/null; }
redis_up() { redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG; }

if ! pg_up; then
  if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
    echo "PostgreSQL is down: starting the local cluster"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
    for _ in $(seq 20); do pg_up && break; sleep 0.5; done
  fi
  if ! pg_up; then
    echo "No PostgreSQL answers on $PG_HOST:$PG_PORT. Start one (Debian: apt-get install postgresql;" >&2
    echo "or: docker compose up -d db) or set DATABASE_URL to one you have." >&2
    exit 1
  fi
fi

if ! redis_up; then
  if command -v redis-server >/dev/null 2>&1; then
    echo "Redis is down: starting redis-server on 127.0.0.1:$REDIS_PORT"
    mkdir -p /tmp/tuneboard-redis
    redis-server --daemonize yes --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no \
      --dir /tmp/tuneboard-redis --logfile /tmp/tuneboard-redis/redis.log
    for _ in $(seq 20); do redis_up && break; sleep 0.25; done
  fi
  if ! redis_up; then
    echo "No Redis answers on 127.0.0.1:$REDIS_PORT. Install one (Debian: apt-get install redis-server;" >&2
    echo "or: docker compose up -d redis) or set REDIS_URL to one you have." >&2
    exit 1
  fi
fi
echo "PostgreSQL and Redis are up"
