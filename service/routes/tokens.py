"""``/tokens``: create, list and revoke API tokens. Always an admin token's, even on loopback with auth off (a web
page the user opens must not mint one for itself); ``phasetune token`` does the same on the database directly,
which is how the first token is made."""

from __future__ import annotations

from fastapi import APIRouter, status

from phasetune.service import auth
from phasetune.service.auth import ALWAYS_ADMIN, AUTH_RESPONSES
from phasetune.service.db import ID_MAX
from phasetune.service.deps import EngineDep
from phasetune.service.errors import NotFound
from phasetune.service.schemas import TokenCreate, TokenCreated, TokenOut

router = APIRouter(prefix="/tokens", tags=["tokens"], responses=AUTH_RESPONSES, dependencies=[ALWAYS_ADMIN])


@router.post("", status_code=status.HTTP_201_CREATED)
def create_token(request: TokenCreate, engine: EngineDep) -> TokenCreated:
    """A new token; the response is the only time it is shown."""
    record, token = auth.create_token(engine, request.scope, request.name)
    return TokenCreated(**record.summary(), token=token)


@router.get("")
def list_tokens(engine: EngineDep) -> list[TokenOut]:
    return [TokenOut(**record.summary()) for record in auth.list_tokens(engine)]


@router.delete("/{token_id}", responses={404: {"description": "no token has this id"}})
def revoke_token(token_id: int, engine: EngineDep) -> TokenOut:
    """Revoke the token: it is refused from the next request on."""
    record = auth.revoke_token(engine, token_id) if 0 <= token_id <= ID_MAX else None
    if record is None:
        raise NotFound("token", token_id)
    return TokenOut(**record.summary())
