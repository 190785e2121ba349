"""Settings from the environment (``PHASETUNE_*``), read through a cached dependency, never at import time."""

from __future__ import annotations

import enum
from functools import lru_cache
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DATA_DIR = Path(".phasetune")


class AuthMode(str, enum.Enum):
    """``PHASETUNE_AUTH``: whether the API requires tokens (``service.auth``). Off is not a mode: beyond loopback
    only ``serve --insecure`` serves without them, and on loopback ``auto`` already does."""

    AUTO = "auto"  # on exactly when the API binds beyond loopback
    ON = "on"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PHASETUNE_", env_ignore_empty=True)

    # phasetune's own tables live in the same database.
    storage_url: str = Field(
        default=f"sqlite:///{(DATA_DIR / 'phasetune.db').resolve()}",
        description="SQLAlchemy URL of the Optuna storage (PostgreSQL: `postgresql+psycopg2://user@host/db`, "
                    "install `.[postgres]`)")
    ray_address: str = Field(default="", description="`host:port` of a Ray cluster's GCS; unset: `serve` starts "
                                                     "(or reuses) a local head on `PHASETUNE_RAY_PORT`")
    ray_port: int = Field(default=6390, description="port of the local Ray head `serve` starts (not Ray's default "
                                                    "6379, which Redis often holds)")
    ray_num_cpus: int | None = Field(default=None, description="CPUs the local head offers; unset: all")
    results_dir: str = Field(default=str((DATA_DIR / "ray_results").resolve()),
                             description="Ray Tune's experiment directory (trial results, a tree study's checkpoints)")
    artifacts_dir: str = Field(default=str((DATA_DIR / "artifacts").resolve()),
                               description="trial artifacts (each trial's schedule plot), which the dashboard "
                                           "shows; shared storage in a cluster")
    # Where workloads' `path` params point (npz files, image folders): nothing outside it is opened. Shared storage,
    # mounted at the same path on every Ray node, in a cluster. The default is workloads.paths.default_data_root's
    # (a test holds them equal), written here because importing that package loads torch, and the CLI reads these
    # settings (API URL, token) on every command.
    data_root: str = Field(default=str((DATA_DIR / "data").resolve()),
                           description="where workloads' `path` params point (`npz`, `image_folder`, plugins); "
                                       "nothing outside it is opened; recorded with each study")
    start_dashboard: bool = Field(default=True, description="`serve` also starts optuna-dashboard")
    dashboard_host: str = Field(default="127.0.0.1", description="where the dashboard listens (`serve` refuses "
                                                                  "one beyond loopback unless `--insecure`)")
    dashboard_port: int = Field(default=8080, description="the dashboard's port")
    dashboard_url: str = Field(default="", description="the dashboard's address shown to users; unset: derived "
                                                       "from its host and port")
    api_url: str = Field(default="http://127.0.0.1:8000", description="where the CLI finds the API")
    # service/auth.py decides from it.
    auth: AuthMode = Field(default=AuthMode.AUTO, description="API tokens: `auto` (required exactly when `serve` "
                                                              "binds beyond loopback) or `on`; only `serve "
                                                              "--insecure` serves without them beyond loopback")
    token: str = Field(default="", description="the CLI's API token; unset: read from `PHASETUNE_TOKEN_FILE`")
    token_file: str = Field(default=str(Path("~/.config/phasetune/token").expanduser()),
                            description="the file holding the CLI's token (readable by its owner only: mode 600)")
    # service/launcher.py runs the check.
    reconcile_s: float = Field(default=30.0, gt=0, description="seconds between the API's checks that Ray answers "
                                                               "and every unfinished study has a driver")
    # For a cluster that gains nodes after a study is submitted (an autoscaler, workers still joining).
    wait_for_nodes: bool = Field(default=False, description="`true`: a study or probe no node can run yet is "
                                                            "admitted and waits (`waiting_for_resources`) instead "
                                                            "of a 422; the compose cluster sets it")
    # Refused before they are parsed: a spec is a few kB.
    max_body_bytes: int = Field(default=1_048_576, ge=1024, description="larger request bodies are 413s")
    # Comma-separated. Host headers the API answers for beyond the address it is bound to (service/browser_guard.py):
    # the names clients reach it by (a DNS name, a reverse proxy's, a published port's `localhost:8000`); `name`
    # admits any port, `name:port` one.
    allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="comma-separated host names (`name` or `name:port`) the API answers for "
                                          "beyond the address it is bound to")
    allowed_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="comma-separated `scheme://host[:port]`: web origins allowed to send "
                                          "requests beside the API's own")

    @field_validator("allowed_hosts", "allowed_origins", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        return [item.strip() for item in value.split(",") if item.strip()] if isinstance(value, str) else value

    @field_validator("allowed_hosts")
    @classmethod
    def _hosts(cls, value: list[str]) -> list[str]:
        if not value:  # the default: nothing to check, and the CLI reads these settings without the API's modules
            return value
        from phasetune.service import browser_guard  # here: the CLI reads these settings on every command

        browser_guard.parse_hosts(value)  # a typo is an error at start-up, not a refused client
        return value

    @field_validator("allowed_origins")
    @classmethod
    def _origins(cls, value: list[str]) -> list[str]:
        if not value:
            return value
        from phasetune.service import browser_guard

        browser_guard.parse_origins(value)
        return value

    @property
    def dashboard_address(self) -> str:
        return self.dashboard_url or f"http://{self.dashboard_host}:{self.dashboard_port}"


@lru_cache
def get_settings() -> Settings:
    return Settings()
