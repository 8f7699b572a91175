"""API keys and who is asking (issue 10, part 1).

Two modes (`HISTOSYNTH_AUTH`):
- `open`, the embedded default: no keys; every request acts as a local admin, and only
  loopback clients are answered (`histosynth serve` also refuses to bind elsewhere), so an
  open service on a laptop is never an open service on a network;
- `keys`: every `/v1` request sends `Authorization: Bearer <secret>`. Secrets are shown once at
  creation; only their sha256 is stored (a secret is 32 random bytes, so a fast hash is the
  right one: there is nothing to brute-force).
"""

from __future__ import annotations

import hashlib
import ipaddress
import secrets
from dataclasses import dataclass
from datetime import timedelta

from fastapi import Request
from starlette.concurrency import run_in_threadpool
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db import session_scope
from app.download_links import QUERY_PARAM, check_link
from app.problems import Problem
from app.tables import ApiKey, utcnow

ROLES = ("admin", "user")
SECRET_PREFIX = "hs_"
# last_used_at is a hint for operators, not a log: written at most this often per key.
LAST_USED_EVERY = timedelta(minutes=1)


@dataclass(frozen=True)
class Principal:
    key_id: str | None  # None in open mode
    role: str
    name: str

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


OPEN_ADMIN = Principal(key_id=None, role="admin", name="local (open mode)")


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_key(session: Session, name: str, role: str) -> tuple[ApiKey, str]:
    """A new key and its secret (the only time the secret exists outside the client)."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    if not name.strip() or len(name) > 100:
        raise ValueError("name must be 1-100 characters")
    secret = SECRET_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey(name=name.strip(), role=role, prefix=secret[:10], secret_sha256=_digest(secret))
    session.add(key)
    session.commit()
    return key, secret


def revoke_key(session: Session, key_id: str) -> ApiKey:
    key = session.get(ApiKey, key_id)
    if key is None:
        raise LookupError(f"no key with id {key_id!r}")
    if key.revoked_at is None:
        key.revoked_at = utcnow()
        session.commit()
    return key


def list_keys(session: Session) -> list[ApiKey]:
    return list(session.scalars(select(ApiKey).order_by(ApiKey.created_at)).all())


def lookup(session: Session, secret: str) -> ApiKey | None:
    key = session.scalar(select(ApiKey).where(ApiKey.secret_sha256 == _digest(secret)))
    if key is None or key.revoked_at is not None:
        return None
    now = utcnow()
    if key.last_used_at is None or now - key.last_used_at > LAST_USED_EVERY:
        key.last_used_at = now
        session.commit()
    return key


def is_loopback(host: str | None) -> bool:
    if host in ("localhost", "testclient"):
        return True
    try:
        return ipaddress.ip_address(host or "").is_loopback
    except ValueError:
        return False


def _unauthorized(detail: str) -> Problem:
    return Problem(401, "Authentication required", detail, headers={"WWW-Authenticate": "Bearer"})


def principal_for(request: Request) -> Principal:
    """Who sends this request (or a 401 problem). Cached on the request."""
    cached = getattr(request.state, "principal", None)
    if cached is not None:
        return cached
    settings = request.app.state.settings
    if settings.auth == "open":
        host = request.client.host if request.client else None
        if not is_loopback(host):
            raise _unauthorized("This server runs without API keys (HISTOSYNTH_AUTH=open) and answers only "
                                "local clients. Ask its operator for a key.")
        principal = OPEN_ADMIN
    elif "authorization" not in request.headers and QUERY_PARAM in request.query_params:
        principal = _principal_from_link(request, request.query_params[QUERY_PARAM])
    else:
        header = request.headers.get("authorization", "")
        scheme, _, secret = header.partition(" ")
        if scheme.lower() != "bearer" or not secret.strip():
            raise _unauthorized("Send an API key as 'Authorization: Bearer <key>' (histosynth keys create).")
        with session_scope(settings.resolved_database_url) as s:
            key = lookup(s, secret.strip())
            if key is None:
                raise _unauthorized("The API key is unknown or revoked.")
            principal = Principal(key_id=key.id, role=key.role, name=key.name)
    request.state.principal = principal
    request.state.key_id = principal.key_id
    return principal


def _principal_from_link(request: Request, token: str) -> Principal:
    """A download link (app.download_links) stands in for the key on one route only: reading
    the artifact it was made for."""
    artifact_id = request.path_params.get("artifact_id")
    if request.method not in ("GET", "HEAD") or request.url.path != f"/v1/artifacts/{artifact_id}":
        raise _unauthorized("A download link opens only the artifact it was made for; send the API key.")
    with session_scope(request.app.state.settings.resolved_database_url) as s:
        key = check_link(s, token, artifact_id)
        if key is None:
            raise _unauthorized("The download link is expired, altered or its key revoked; ask for a new one.")
        return Principal(key_id=key.id, role=key.role, name=key.name)


async def authenticate(request: Request) -> Principal:
    """Router dependency for every /v1 route. The key lookup (a database read) runs on a
    worker thread, so a slow database never stalls the event loop."""
    if request.app.state.settings.auth == "open":
        return principal_for(request)
    return await run_in_threadpool(principal_for, request)


def require_admin(principal: Principal, what: str) -> None:
    if not principal.is_admin:
        raise Problem(403, "Admin key required", f"Only an admin key may {what}.")


async def require_admin_key(request: Request) -> None:
    """Dependency for operator endpoints (/metrics when keys are required)."""
    require_admin(await authenticate(request), "read this endpoint")
