"""The FastAPI app, built by a factory: nothing (settings, engine, Ray) exists at import time."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from phasetune.service.auth import auth_enabled
from phasetune.service.body_limit import BodyLimit
from phasetune.service.browser_guard import BrowserGuard
from phasetune.service.db import make_engine, migrate
from phasetune.service.docs import mount_docs
from phasetune.service.errors import add_exception_handlers
from phasetune.service.launcher import Launcher
from phasetune.service.openapi import customise_openapi
from phasetune.service.probe_runner import ProbeRunner
from phasetune.service.routes import health
from phasetune.service.routes import probes as probes_routes
from phasetune.service.routes import studies as studies_routes
from phasetune.service.routes import tokens as tokens_routes
from phasetune.service.routes import workloads as workloads_routes
from phasetune.service.settings import Settings, get_settings
from phasetune.workers.storage import open_storage


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
    app.state.auth = not insecure and auth_enabled(settings.auth, host)
    customise_openapi(app, auth=app.state.auth)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    # Added last, so outermost: a request a web page may have forged is refused before its body is read.
    app.add_middleware(BrowserGuard, allowed_hosts=settings.allowed_hosts, allowed_origins=settings.allowed_origins)
    app.include_router(health.router)
    app.include_router(studies_routes.router)
    app.include_router(probes_routes.router)
    app.include_router(workloads_routes.router)
    app.include_router(tokens_routes.router)

    add_exception_handlers(app)
    return app
