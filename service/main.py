"""The FastAPI app, built by a factory: nothing (settings, engine, Ray) exists at import time."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
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
from phasetune.service import probes, studies
from phasetune.service.auth import auth_enabled, without_auth
from phasetune.service.body_limit import BodyLimit
from phasetune.service.browser_guard import BrowserGuard, document_guard
from phasetune.service.db import describe_error, make_engine, migrate
from phasetune.service.docs import mount_docs
from phasetune.service.launcher import Launcher
from phasetune.service.openapi import publish_spec_language
from phasetune.service.probe_runner import ProbeRunner
from phasetune.service.routes import health
from phasetune.service.routes import probes as probes_routes
from phasetune.service.routes import studies as studies_routes
from phasetune.service.routes import tokens as tokens_routes
from phasetune.service.routes import workloads as workloads_routes
from phasetune.service.settings import Settings, get_settings
from phasetune.workers.storage import open_storage


def _json_safe(value: Any) -> Any:
    """``value`` as JSON can carry it, for echoing what a client sent: every non-finite float as its string ("inf",
    "nan"), every string (and key) UTF-8 cannot encode (a lone surrogate) with that character as its escape."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {_json_safe(key): _json_safe(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_json_safe(item) for item in value]
    return value


_METHODS = ("DELETE", "GET", "HEAD", "PATCH", "POST", "PUT")


def _allowed_methods(request: Request) -> str:
    """Every method some route serves on the request's path (its ``Allow`` header), each asked of the router as the
    request itself would be (included routers hold their routes out of sight)."""
    served = [method for method in _METHODS
              if any(route.matches({**request.scope, "method": method})[0] is Match.FULL
                     for route in request.app.router.routes)]
    return ", ".join(served)


def create_app(settings: Settings | None = None, *, run_studies: bool = True, host: str | None = None,
               insecure: bool = False) -> FastAPI:
    """The API over ``settings``' storage. ``run_studies=False`` leaves Ray out entirely: studies are stored and
    read but nothing launches them (what the fast tests use). ``host`` is the address it is served on (auth is on
    beyond loopback, ``phasetune.service.auth``), unless ``insecure``."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        migrate(settings.storage_url)
        app.state.settings = settings
        app.state.engine = make_engine(settings.storage_url)
        app.state.storage = open_storage(settings.storage_url)
        # Every Ray call runs in the launcher's child process, the Ray agent: none in this one (service/ray_agent.py).
        app.state.launcher = Launcher(settings, app.state.storage) if run_studies else None
        app.state.probe_runner = ProbeRunner(app.state.launcher) if run_studies else None
        if run_studies:
            app.state.launcher.start()
        yield
        if run_studies:
            app.state.launcher.close()
        app.state.engine.dispose()
        app.state.storage.engine.dispose()

    app = FastAPI(title="phasetune", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None,
                  responses={503: {"description": "the storage does not answer (retry later); nothing was stored"}},
                  description="Hyperparameter search over training schedules, on Ray Tune and Optuna.")
    mount_docs(app)
    publish_spec_language(app)
    app.state.auth = not insecure and auth_enabled(settings.auth, host)
    if not app.state.auth:
        without_auth(app)
    document_guard(app)  # after without_auth: its 403s stay, whether tokens are needed or not
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    # Added last, so outermost: a request a web page may have forged is refused before its body is read.
    app.add_middleware(BrowserGuard, allowed_hosts=settings.allowed_hosts, allowed_origins=settings.allowed_origins)
    app.include_router(health.router)
    app.include_router(studies_routes.router)
    app.include_router(probes_routes.router)
    app.include_router(workloads_routes.router)
    app.include_router(tokens_routes.router)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException) -> Response:
        # Starlette's 405 names the methods of the first route whose path matched (POST /studies), not of every
        # route on that path (GET /studies too).
        if err.status_code == status.HTTP_405_METHOD_NOT_ALLOWED:
            err = StarletteHTTPException(err.status_code, err.detail,
                                         headers={**(err.headers or {}), "Allow": _allowed_methods(request)})
        return await http_exception_handler(request, err)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, err: RequestValidationError) -> JSONResponse:
        # FastAPI's own shape, with what the client sent made JSON-safe: an echoed 1e999 or NaN cannot be encoded,
        # and the default handler would answer 500 to the client's mistake.
        content = {"detail": _json_safe(jsonable_encoder(err.errors()))}
        return JSONResponse(status_code=status.HTTP_422_UNPROCESSABLE_CONTENT, content=content)

    @app.exception_handler(SpecError)
    async def spec_error(_: Request, err: SpecError) -> JSONResponse:
        # The same shape as FastAPI's own validation errors, so clients parse one format.
        # rule_error: a rule the published schema cannot state (search_spaces.errors.RuleError).
        kind = "rule_error" if isinstance(err, RuleError) else "value_error"
        detail = [{"loc": ["body", *err.loc], "msg": err.msg, "type": kind}]
        return JSONResponse(status_code=status.HTTP_422_UNPROCESSABLE_CONTENT, content={"detail": detail})

    @app.exception_handler(OperationalError)
    @app.exception_handler(InterfaceError)
    @app.exception_handler(optuna.exceptions.StorageInternalError)
    async def storage_down(_: Request, err: Exception) -> JSONResponse:
        # The database is unreachable or restarting: the client may retry; a failed write was rolled back.
        return JSONResponse(status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
                            content={"detail": f"the storage does not answer: {describe_error(err)}"})

    @app.exception_handler(studies.StudyExists)
    async def exists(_: Request, err: studies.StudyExists) -> JSONResponse:
        return JSONResponse(status_code=status.HTTP_409_CONFLICT,
                            content={"detail": f"a study named {err.args[0]!r} exists"})

    @app.exception_handler(studies.StudyNotFound)
    async def not_found(_: Request, err: studies.StudyNotFound) -> JSONResponse:
        return JSONResponse(status_code=status.HTTP_404_NOT_FOUND,
                            content={"detail": f"no study with id {err.args[0]}"})

    @app.exception_handler(probes.ClusterUnavailable)
    async def no_cluster(_: Request, err: probes.ClusterUnavailable) -> JSONResponse:
        return JSONResponse(status_code=status.HTTP_503_SERVICE_UNAVAILABLE, content={"detail": str(err)})

    return app
