"""Every exception handler of the API, in one place, and the service's own errors that map to an HTTP answer.

Routes and the modules under them raise; only ``add_exception_handlers`` decides the status and the body. Every
error body is ``{"detail": ...}``: a string, or FastAPI's list of located errors for a 422.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import optuna
from fastapi import FastAPI, Request, status
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import InterfaceError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from phasetune.search_spaces import SpecError
from phasetune.search_spaces.errors import RuleError
from phasetune.search_spaces.jsonsafe import json_safe
from phasetune.service.db import describe_error


class NotFound(Exception):
    """Nothing of kind ``what`` has id ``ident``: a 404 ``{"detail": "no <what> with id <ident>"}``."""

    def __init__(self, what: str, ident: int) -> None:
        super().__init__(f"no {what} with id {ident}")
        self.what = what
        self.ident = ident


class AlreadyExists(Exception):
    """A ``what`` named ``name`` exists: a 409."""

    def __init__(self, what: str, name: str) -> None:
        super().__init__(f"a {what} named {name!r} exists")
        self.what = what
        self.name = name


class ClusterUnavailable(Exception):
    """No Ray cluster is connected (yet): a 503, the request may be retried."""


_METHODS = ("DELETE", "GET", "HEAD", "PATCH", "POST", "PUT")


def _allowed_methods(request: Request) -> str:
    """Every method some route serves on the request's path (its ``Allow`` header), each asked of the router as the
    request itself would be (included routers hold their routes out of sight)."""
    served = [method for method in _METHODS
              if any(route.matches({**request.scope, "method": method})[0] is Match.FULL
                     for route in request.app.router.routes)]
    return ", ".join(served)


def _detail(status_code: int, detail: Any) -> JSONResponse:
    return JSONResponse(status_code=status_code, content={"detail": detail})


async def _http_error(request: Request, err: StarletteHTTPException) -> Response:
    # Starlette's 405 names the methods of the first route whose path matched (POST /studies), not of every route
    # on that path (GET /studies too).
    if err.status_code == status.HTTP_405_METHOD_NOT_ALLOWED:
        err = StarletteHTTPException(err.status_code, err.detail,
                                     headers={**(err.headers or {}), "Allow": _allowed_methods(request)})
    return await http_exception_handler(request, err)


async def _invalid(_: Request, err: RequestValidationError) -> JSONResponse:
    # FastAPI's own shape, with what the client sent made JSON-safe (search_spaces.jsonsafe): an echoed 1e999, NaN
    # or lone surrogate cannot be encoded, and the default handler would answer 500 to the client's mistake.
    return _detail(status.HTTP_422_UNPROCESSABLE_CONTENT, json_safe(jsonable_encoder(err.errors())))


async def _spec_error(_: Request, err: SpecError) -> JSONResponse:
    # The same shape as FastAPI's own validation errors, so clients parse one format.
    # rule_error: a rule the published schema cannot state (search_spaces.errors.RuleError).
    kind = "rule_error" if isinstance(err, RuleError) else "value_error"
    return _detail(status.HTTP_422_UNPROCESSABLE_CONTENT, [{"loc": ["body", *err.loc], "msg": err.msg, "type": kind}])


async def _storage_down(_: Request, err: Exception) -> JSONResponse:
    # The database is unreachable or restarting: the client may retry; a failed write was rolled back.
    return _detail(status.HTTP_503_SERVICE_UNAVAILABLE, f"the storage does not answer: {describe_error(err)}")


async def _exists(_: Request, err: AlreadyExists) -> JSONResponse:
    return _detail(status.HTTP_409_CONFLICT, str(err))


async def _not_found(_: Request, err: NotFound) -> JSONResponse:
    return _detail(status.HTTP_404_NOT_FOUND, str(err))


async def _no_cluster(_: Request, err: ClusterUnavailable) -> JSONResponse:
    return _detail(status.HTTP_503_SERVICE_UNAVAILABLE, str(err))


def add_exception_handlers(app: FastAPI) -> None:
    """Register every handler of the API on ``app``."""
    handlers: list[tuple[type[Exception], Callable[[Request, Any], Awaitable[Response]]]] = [
        (StarletteHTTPException, _http_error),
        (RequestValidationError, _invalid),
        (SpecError, _spec_error),
        (OperationalError, _storage_down),
        (InterfaceError, _storage_down),
        (optuna.exceptions.StorageInternalError, _storage_down),
        (AlreadyExists, _exists),
        (NotFound, _not_found),
        (ClusterUnavailable, _no_cluster),
    ]
    for exception, handler in handlers:
        app.add_exception_handler(exception, handler)
