"""Bearer tokens with scopes: who may read, who may start work, who may manage tokens.

A token is 32 random bytes (``pt_`` + URL-safe base64), shown once when it is created; the database keeps only its
SHA-256 (a token is high-entropy, so a fast hash is enough: there is nothing to brute-force). Scopes are ordered:
``admin`` can do what ``write`` can, which can do what ``read`` can.

Auth is on when ``serve`` binds to anything but loopback (``serve`` refuses to start so without a token unless told
``--insecure``), or when ``PHASETUNE_AUTH=on``; on loopback it is off by default. ``GET /health`` and the API's own
documentation (``/docs``, ``/redoc``, ``/openapi.json``: no data) are open either way; ``/tokens`` needs an admin
token either way (``ALWAYS_ADMIN``).
"""

from __future__ import annotations

import enum
import hashlib
import ipaddress
import secrets
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from phasetune.service.db import TOKEN_NAME_MAX, TokenRecord
from phasetune.service.settings import AuthMode

TOKEN_PREFIX = "pt_"


class Scope(str, enum.Enum):
    READ = "read"
    WRITE = "write"
    ADMIN = "admin"

    def allows(self, needed: Scope) -> bool:
        order = list(Scope)
        return order.index(self) >= order.index(needed)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a hostname: it may resolve to anything


def auth_enabled(mode: AuthMode, host: str | None) -> bool:
    """Whether requests need a token, for an API bound to ``host`` (None: not bound, e.g. a test client)."""
    return mode is AuthMode.ON or (host is not None and not is_loopback(host))


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(engine: Engine, scope: Scope, name: str) -> tuple[TokenRecord, str]:
    """A new token: its record, and the token itself (returned here only; the database keeps its digest)."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    with Session(engine, expire_on_commit=False) as session:
        record = TokenRecord(name=name[:TOKEN_NAME_MAX], scope=scope.value, digest=_digest(token))
        session.add(record)
        session.commit()
    return record, token


def list_tokens(engine: Engine) -> list[TokenRecord]:
    with Session(engine) as session:
        return list(session.scalars(select(TokenRecord).order_by(TokenRecord.id)))


def revoke_token(engine: Engine, token_id: int) -> TokenRecord | None:
    """Revoke token ``token_id`` (None: no such token); revoking twice keeps the first time."""
    with Session(engine, expire_on_commit=False) as session:
        record = session.get(TokenRecord, token_id)
        if record is not None and record.revoked_at is None:
            record.revoked_at = datetime.now(timezone.utc)
            session.commit()
        return record


def active_tokens(engine: Engine) -> int:
    with Session(engine) as session:
        return session.scalar(select(func.count()).select_from(TokenRecord).where(TokenRecord.revoked_at.is_(None)))


def scope_of(engine: Engine, token: str) -> Scope | None:
    """The scope ``token`` grants (None: unknown or revoked). Looked up by its SHA-256, never by the token: what
    the lookup's timing could depend on is the digest, which says nothing about how close a guess was to a token
    (the usual constant-time comparison, without comparing secrets at all)."""
    with Session(engine) as session:
        record = session.scalar(select(TokenRecord).where(TokenRecord.digest == _digest(token)))
    if record is None or record.revoked_at is not None:
        return None
    return Scope(record.scope)


_bearer = HTTPBearer(auto_error=False, description="a phasetune token (`phasetune token create`)")
# The routes that need a token with auth off too (token management) name their own scheme, so that the OpenAPI of an
# app with auth off still documents it for them (document_without_auth keeps it).
ALWAYS_SCHEME = "AdminBearer"
_always_bearer = HTTPBearer(auto_error=False, scheme_name=ALWAYS_SCHEME,
                            description="an admin token (`phasetune token create --scope admin`), needed even where "
                                        "auth is off")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
AlwaysCredentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_always_bearer)]
UNAUTHORIZED = {"description": "no token, or an unknown or revoked one (when auth is on)"}
FORBIDDEN = {"description": "the token's scope does not allow this route"}
AUTH_RESPONSES = {401: UNAUTHORIZED, 403: FORBIDDEN}


def _verify(request: Request, credentials: HTTPAuthorizationCredentials | None, needed: Scope) -> None:
    """401 without a known, unrevoked bearer token; 403 if its scope does not allow ``needed``."""
    if credentials is None:  # HTTPBearer gives None for a missing header and for another scheme
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "a bearer token is needed (Authorization: Bearer ...)",
                            headers={"WWW-Authenticate": "Bearer"})
    granted = scope_of(request.app.state.engine, credentials.credentials)
    if granted is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "unknown or revoked token",
                            headers={"WWW-Authenticate": "Bearer"})
    if not granted.allows(needed):
        raise HTTPException(status.HTTP_403_FORBIDDEN, f"a {granted.value} token cannot do this: it needs "
                                                       f"{needed.value}")


def require(needed: Scope) -> Callable[..., None]:
    """A route dependency: with auth on, the request's bearer token must grant ``needed`` (401 / 403 if not)."""

    def check(request: Request, credentials: Credentials) -> None:
        if request.app.state.auth:
            _verify(request, credentials, needed)

    return check


def require_always(needed: Scope) -> Callable[..., None]:
    """``require``, with auth off too: for what must not be had for asking (a token), even on loopback."""

    def check(request: Request, credentials: AlwaysCredentials) -> None:
        _verify(request, credentials, needed)

    return check


READ = Depends(require(Scope.READ))
WRITE = Depends(require(Scope.WRITE))
ADMIN = Depends(require(Scope.ADMIN))
# Token management: an admin token always, auth on or off. On loopback with auth off, the first token comes from
# `phasetune token create` (on the database); a web page the user opens can send no token at all.
ALWAYS_ADMIN = Depends(require_always(Scope.ADMIN))


def document_without_auth(schema: dict[str, Any]) -> None:
    """Make the OpenAPI ``schema`` say what an app with auth off does: no bearer scheme, no 401 or 403, but on the
    operations that need a token anyway (``ALWAYS_SCHEME``). A step of ``service.openapi.customise_openapi``."""
    schemes = schema.get("components", {}).get("securitySchemes", {})
    schemes.pop(_bearer.scheme_name, None)
    if not schemes:
        schema.get("components", {}).pop("securitySchemes", None)
    for operations in schema["paths"].values():
        for operation in operations.values():
            if any(ALWAYS_SCHEME in requirement for requirement in operation.get("security", [])):
                continue
            operation.pop("security", None)
            for code in ("401", "403"):
                operation["responses"].pop(code, None)
