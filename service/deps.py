"""Dependencies as ``Annotated`` aliases, so handler signatures read as what they use."""

from __future__ import annotations

from typing import Annotated

import optuna
from fastapi import Depends, Request
from sqlalchemy import Engine

from phasetune.service.launcher import Launcher
from phasetune.service.probe_runner import ProbeRunner
from phasetune.service.settings import Settings


def _engine(request: Request) -> Engine:
    return request.app.state.engine


def _storage(request: Request) -> optuna.storages.RDBStorage:
    return request.app.state.storage


def _settings(request: Request) -> Settings:
    return request.app.state.settings


def _launcher(request: Request) -> Launcher | None:
    return request.app.state.launcher


def _probe_runner(request: Request) -> ProbeRunner | None:
    return request.app.state.probe_runner


EngineDep = Annotated[Engine, Depends(_engine)]
StorageDep = Annotated[optuna.storages.RDBStorage, Depends(_storage)]  # the reads query its tables (SQL)
SettingsDep = Annotated[Settings, Depends(_settings)]
LauncherDep = Annotated[Launcher | None, Depends(_launcher)]
ProbeRunnerDep = Annotated[ProbeRunner | None, Depends(_probe_runner)]
