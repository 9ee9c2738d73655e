"""Failed token checks counted per client address in Redis, and the address refused once it passed the limit:
TUNEBOARD_TOKEN_FAILURE_LIMIT failures within TUNEBOARD_TOKEN_FAILURE_WINDOW_S (a fixed window from the first).

Not django-axes: axes locks usernames and login forms, and a token carries no username, so its failures would count
only by address and lock that address (a CI box, an office behind one NAT) out of the login page too; it also
writes a database row per failure, which a flood of bad tokens would turn into load. Redis is shared by every web
process and answers an INCR in a fraction of a millisecond; the keys carry the deployment's Channels prefix."""
from __future__ import annotations

import logging

import redis
from django.conf import settings

log = logging.getLogger(__name__)
_clients: dict[str, redis.Redis] = {}


def _client() -> redis.Redis:
    url = settings.REDIS_URL
    if url not in _clients:
        _clients[url] = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
    return _clients[url]


def _key(address: str | None) -> str:
    return f"{settings.CHANNEL_LAYERS['default']['CONFIG']['prefix']}:token-failures:{address or 'unknown'}"


def blocked_for(address: str | None) -> int | None:
    """Seconds until `address` may try a token again, or None while it may. Redis down: it may (a warning)."""
    try:
        pipe = _client().pipeline()
        pipe.get(_key(address))
        pipe.ttl(_key(address))
        count, ttl = pipe.execute()
    except redis.RedisError as exc:
        log.warning("token failure limit not checked (Redis: %s)", exc)
        return None
    if count is None or int(count) < settings.TUNEBOARD_TOKEN_FAILURE_LIMIT:
        return None
    return max(int(ttl), 1)


def record_failure(address: str | None) -> None:
    try:
        pipe = _client().pipeline()
        pipe.incr(_key(address))
        pipe.expire(_key(address), int(settings.TUNEBOARD_TOKEN_FAILURE_WINDOW_S), nx=True)
        pipe.execute()
    except redis.RedisError as exc:
        log.warning("token failure not counted (Redis: %s)", exc)


def reset(address: str | None) -> None:
    """Forget an address's failures (the tests; an operator: `redis-cli DEL <prefix>:token-failures:<address>`)."""
    _client().delete(_key(address))


def refusal(wait: int) -> str:
    return (f"too many failed token attempts from this address ({settings.TUNEBOARD_TOKEN_FAILURE_LIMIT} within "
            f"{int(settings.TUNEBOARD_TOKEN_FAILURE_WINDOW_S)} s); try again in {wait} s")
