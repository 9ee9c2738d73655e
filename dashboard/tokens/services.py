"""Every write to an API token, and the one check that turns a token's text into its user (or says why not).

A token is "tb_" and 43 characters of URL-safe base64 (32 random bytes). Only its SHA-256 digest is stored: the
token is random, so there is no dictionary to try against the digest, and a slow password hash (PBKDF2) would cost
every API request a few hundred milliseconds for nothing."""
from __future__ import annotations

import hashlib
import re
import secrets
from datetime import datetime, timedelta

from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.utils import timezone

from dashboard.models import ApiToken
from training.engine.config import text_problem

TOKEN_PREFIX = "tb_"
TOKEN_TEXT = re.compile(r"^tb_[A-Za-z0-9_-]{43}$")
SHOWN_CHARS = 8  # "tb_" and the token's first 5 characters: enough to tell a user's tokens apart
MAX_EXPIRY_DAYS = 3650
# last_used_at is written at most this often per token: a script's every request must not be a database write.
LAST_USED_EVERY = timedelta(minutes=1)


class TokenError(Exception):
    """A token refused, with the reason the caller is told (401)."""


def digest_of(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def token_text_error(text: str) -> str | None:
    """Why `text` cannot be a Tuneboard token (pure), or None when it has the shape of one."""
    if not text:
        return "no token: send 'Authorization: Bearer tb_...' with a token from Settings → API tokens"
    if not text.startswith(TOKEN_PREFIX):
        return "malformed token: a Tuneboard token starts with 'tb_'"
    if not TOKEN_TEXT.match(text):
        return (f"malformed token: a Tuneboard token is 'tb_' and 43 letters, digits, '-' or '_' "
                f"({len(text)} characters given, 46 expected)")
    return None


def token_create(*, user, name: str, expires_in_days: int | None = None) -> tuple[ApiToken, str]:
    """A new token of `user` and its text, which is never stored and so can be shown only now."""
    errors = {}
    name = (name or "").strip()
    if not name:
        errors["name"] = "give the token a name that says where it is used, e.g. 'CI on the eval box'"
    elif len(name) > 100:
        errors["name"] = "at most 100 characters"
    elif problem := text_problem(name):
        errors["name"] = problem
    if expires_in_days is not None and (isinstance(expires_in_days, bool) or not isinstance(expires_in_days, int)
                                        or not 1 <= expires_in_days <= MAX_EXPIRY_DAYS):
        errors["expires_in_days"] = f"a whole number of days from 1 to {MAX_EXPIRY_DAYS}, or none for no expiry"
    if errors:
        raise ValidationError(errors)
    text = TOKEN_PREFIX + secrets.token_urlsafe(32)
    expires_at = timezone.now() + timedelta(days=expires_in_days) if expires_in_days else None
    token = ApiToken.objects.create(user=user, name=name, prefix=text[:SHOWN_CHARS], digest=digest_of(text),
                                    expires_at=expires_at)
    return token, text


def token_revoke(*, token: ApiToken, user) -> ApiToken:
    """Revoke `token` (its own user's, or any for staff: the admin); revoking twice keeps the first time."""
    if token.user_id != user.pk and not user.is_staff:
        raise PermissionDenied("Only the token's own user (or an admin) can revoke it")
    with transaction.atomic():
        locked = ApiToken.objects.select_for_update().get(pk=token.pk)
        if locked.revoked_at is None:
            locked.revoked_at, locked.revoked_by = timezone.now(), user
            # A save (not update()), so the websockets opened with it hear of it (training/live/access_signals.py).
            locked.save(update_fields=["revoked_at", "revoked_by"])
    return locked


def _when(moment: datetime) -> str:
    return timezone.localtime(moment).strftime("%Y-%m-%d %H:%M:%S %Z")


def token_authenticate(text: str, *, now: datetime | None = None) -> ApiToken:
    """The token with this text, its user loaded and its last use noted; TokenError saying why not otherwise."""
    text = (text or "").strip()
    problem = token_text_error(text)
    if problem:
        raise TokenError(problem)
    token = ApiToken.objects.select_related("user").filter(digest=digest_of(text)).order_by().first()
    if token is None:
        raise TokenError("unknown token: it was never made here, or it was mistyped")
    now = now or timezone.now()
    refusal = token_refusal(token, now=now)
    if refusal:
        raise TokenError(refusal)
    if token.last_used_at is None or now - token.last_used_at >= LAST_USED_EVERY:
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
        token.last_used_at = now
    return token


def token_refusal(token: ApiToken, *, now: datetime | None = None) -> str | None:
    """Why a stored token no longer admits anyone, or None while it does."""
    state = token.state(now)
    if state == "revoked":
        return f"token {token.prefix}… ({token.name}) was revoked at {_when(token.revoked_at)}"
    if state == "expired":
        return f"token {token.prefix}… ({token.name}) expired at {_when(token.expires_at)}; make a new one"
    if token.user_id is None:
        return f"token {token.prefix}… ({token.name}) belonged to a user who was removed"
    if not token.user.is_active:
        return f"token {token.prefix}… ({token.name}) belongs to {token.user.get_username()}, who is deactivated"
    return None


def token_still_usable(token_id: int) -> bool:
    """An open websocket's re-check: its token still admits its user."""
    token = ApiToken.objects.select_related("user").filter(pk=token_id).first()
    return token is not None and token_refusal(token) is None
