"""Settings from the environment (``PHASETUNE_*``), read through a cached dependency, never at import time."""

from __future__ import annotations

import enum
from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from phasetune.workers.workloads.paths import default_data_root

DATA_DIR = Path(".phasetune")


class AuthMode(str, enum.Enum):
    """``PHASETUNE_AUTH``: whether the API requires tokens (``service.auth``). Off is not a mode: beyond loopback
    only ``serve --insecure`` serves without them, and on loopback ``auto`` already does."""

    AUTO = "auto"  # on exactly when the API binds beyond loopback
    ON = "on"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PHASETUNE_", env_ignore_empty=True)

    # SQLAlchemy URL of the Optuna storage; phasetune's own table lives in the same database.
    storage_url: str = f"sqlite:///{(DATA_DIR / 'phasetune.db').resolve()}"
    # "host:port" of a Ray cluster's GCS; empty: `serve` starts (or reuses) a local head on ray_port.
    ray_address: str = ""
    ray_port: int = 6390  # not 6379: Redis often holds Ray's default port
    ray_num_cpus: int | None = None
    results_dir: str = str((DATA_DIR / "ray_results").resolve())
    # Trial artifacts (each trial's schedule plot); the dashboard is started with it. Shared storage in a cluster.
    artifacts_dir: str = str((DATA_DIR / "artifacts").resolve())
    # Where workloads' `path` params point (npz files, image folders): nothing outside it is opened. Shared storage,
    # mounted at the same path on every Ray node, in a cluster.
    data_root: str = Field(default_factory=lambda: str(default_data_root()))
    start_dashboard: bool = True
    dashboard_host: str = "127.0.0.1"
    dashboard_port: int = 8080
    dashboard_url: str = ""  # the address shown to users; derived from host and port when empty
    api_url: str = "http://127.0.0.1:8000"  # where the CLI finds the API
    # API tokens: auto = on exactly when `serve` binds beyond loopback (service/auth.py).
    auth: AuthMode = AuthMode.AUTO
    # The CLI's token: PHASETUNE_TOKEN, or this file (it must be readable by its owner only).
    token: str = ""
    token_file: str = str(Path("~/.config/phasetune/token").expanduser())
    # How often the API checks that every unfinished study has a driver and that Ray answers (service/launcher.py).
    reconcile_s: float = Field(default=30.0, gt=0)
    # A cluster that gains nodes after a study is submitted (an autoscaler, workers still joining): a study or
    # probe no node can run yet is admitted and waits (waiting_for_resources) instead of being a 422.
    wait_for_nodes: bool = False
    # Larger request bodies are refused (413) before they are parsed: a spec is a few kB.
    max_body_bytes: int = Field(default=1_048_576, ge=1024)

    @property
    def dashboard_address(self) -> str:
        return self.dashboard_url or f"http://{self.dashboard_host}:{self.dashboard_port}"


@lru_cache
def get_settings() -> Settings:
    return Settings()
