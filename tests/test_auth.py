"""API tokens over real HTTP (uvicorn on loopback, auth on, a real storage; no Ray); in the slow tier (real
``phasetune`` processes) the CLI's token commands and ``serve``'s refusal to expose the API without one."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text

from phasetune.service.auth import Scope, create_token
from phasetune.service.db import make_engine, migrate
from phasetune.service.main import create_app
from phasetune.service.settings import AuthMode, Settings
from tests.conftest import BIN, free_port, served_in_thread
from tests.factories import small_spec


def _cli(storage: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PHASETUNE_STORAGE_URL": storage, "PHASETUNE_TOKEN": "",
                   "PHASETUNE_TOKEN_FILE": "/nonexistent/phasetune-token", **env}  # none but the test's own
    return subprocess.run([str(BIN / "phasetune"), *args], capture_output=True, text=True, timeout=120,
                          env=environment)


@pytest.fixture(scope="module")
def api(module_storage_url: str, tmp_path_factory) -> Iterator[str]:
    """The app with auth on, served by uvicorn on a free loopback port."""
    workdir = tmp_path_factory.mktemp("auth")
    settings = Settings(storage_url=module_storage_url, auth=AuthMode.ON, start_dashboard=False,
                        results_dir=str(workdir / "results"), artifacts_dir=str(workdir / "artifacts"))
    migrate(module_storage_url)
    with served_in_thread(create_app(settings, run_studies=False)) as url:
        yield url


@pytest.fixture(scope="module")
def tokens(api: str, module_storage_url: str) -> dict[str, str]:
    """One token per scope, made on the database as `phasetune token create` makes them (the CLI itself is
    exercised by the slow test below)."""
    engine = make_engine(module_storage_url)
    made = {scope.value: create_token(engine, scope, f"test {scope.value}")[1] for scope in Scope}
    engine.dispose()
    assert all(token.startswith("pt_") for token in made.values())
    return made


def _as(api: str, token: str | None) -> httpx.Client:
    return httpx.Client(base_url=api, timeout=30, headers={"Authorization": f"Bearer {token}"} if token else {})


ROUTES = [("GET", "/studies"), ("GET", "/studies/1"), ("GET", "/studies/1/trials"), ("POST", "/studies/1/stop"),
          ("GET", "/workloads"), ("GET", "/probes/1"), ("POST", "/probes"), ("GET", "/tokens"),
          ("POST", "/tokens"), ("DELETE", "/tokens/999999")]
WRITES = {("POST", "/studies/1/stop"), ("POST", "/probes")}
ADMINS = {("GET", "/tokens"), ("POST", "/tokens"), ("DELETE", "/tokens/999999")}


def test_without_a_token_only_health_answers(api, tokens):
    with _as(api, None) as client:
        assert client.get("/health").status_code == 200
        for method, path in [*ROUTES, ("POST", "/studies")]:
            response = client.request(method, path, json={})
            assert response.status_code == 401, (method, path, response.text)
            assert response.headers["www-authenticate"] == "Bearer"
    for wrong in ("pt_" + "x" * 43, tokens["admin"][:-1], "Bearer"):
        with httpx.Client(base_url=api, timeout=30, headers={"Authorization": f"Bearer {wrong}"}) as client:
            assert client.get("/studies").status_code == 401
    with httpx.Client(base_url=api, timeout=30, headers={"Authorization": f"Basic {tokens['admin']}"}) as client:
        assert client.get("/studies").status_code == 401


def test_each_scope_reaches_its_routes_and_no_further(api, tokens):
    for scope, token in tokens.items():
        with _as(api, token) as client:
            for method, path in ROUTES:
                needs = "admin" if (method, path) in ADMINS else "write" if (method, path) in WRITES else "read"
                allowed = ["read", "write", "admin"].index(scope) >= ["read", "write", "admin"].index(needs)
                code = client.request(method, path, json={}).status_code
                # Past the door: a 404 (no such study/probe/token) or 422 (the empty body) is the route's own answer.
                assert (code != 403) if allowed else (code == 403), (scope, method, path, code)
                assert code not in (401, 500), (scope, method, path, code)
            created = client.post("/studies", json=small_spec(f"by-{scope}"))
            assert created.status_code == (403 if scope == "read" else 201), created.text
            if scope == "read":
                assert "needs write" in created.json()["detail"]


def test_tokens_are_stored_as_hashes_and_revoked_ones_refused(api, tokens, module_storage_url):
    with _as(api, tokens["admin"]) as admin:
        made = admin.post("/tokens", json={"scope": "read", "name": "short-lived"})
        assert made.status_code == 201, made.text
        token, token_id = made.json()["token"], made.json()["id"]
        listed = admin.get("/tokens").json()
        assert {t["name"] for t in listed} >= {"test read", "test write", "test admin", "short-lived"}
        assert all("token" not in t and "digest" not in t for t in listed)
        with _as(api, token) as reader:
            assert reader.get("/studies").status_code == 200
            assert admin.delete(f"/tokens/{token_id}").json()["revoked"] is True
            assert reader.get("/studies").status_code == 401
        assert admin.delete(f"/tokens/{2**63}").status_code == 404
    engine = make_engine(module_storage_url)
    with engine.connect() as connection:
        rows = [" ".join(map(str, row)) for row in connection.execute(text("SELECT * FROM phasetune_tokens"))]
    engine.dispose()
    assert rows and not any(t in row for row in rows for t in [token, *tokens.values()])


@pytest.mark.slow
def test_the_cli_lists_revokes_and_sends_its_token(api, tokens, module_storage_url, tmp_path):
    if module_storage_url.startswith("postgresql"):
        pytest.skip("the CLI's side is the same on every storage (its token create ran on both): once, on SQLite")
    listed = _cli(module_storage_url, "token", "list")
    assert listed.returncode == 0 and "test write" in listed.stdout and "active" in listed.stdout

    refused = _cli(module_storage_url, "list", "--api", api)
    assert refused.returncode != 0 and "401" in refused.stderr
    assert _cli(module_storage_url, "list", "--api", api, PHASETUNE_TOKEN=tokens["read"]).returncode == 0

    token_file = tmp_path / "token"
    token_file.write_text(tokens["read"] + "\n")
    token_file.chmod(0o644)
    loose = _cli(module_storage_url, "list", "--api", api, PHASETUNE_TOKEN_FILE=str(token_file))
    assert loose.returncode != 0 and "chmod 600" in loose.stderr
    token_file.chmod(0o600)
    assert _cli(module_storage_url, "list", "--api", api, PHASETUNE_TOKEN_FILE=str(token_file)).returncode == 0

    made = _cli(module_storage_url, "token", "create", "--scope", "read")
    assert made.returncode == 0 and made.stdout.strip().startswith("pt_") and "shown only now" in made.stderr
    token_id = made.stderr.split("token ")[1].split(" ")[0]
    assert _cli(module_storage_url, "token", "revoke", token_id).returncode == 0
    assert _cli(module_storage_url, "list", "--api", api, PHASETUNE_TOKEN=made.stdout.strip()).returncode != 0
    assert "revoked" in _cli(module_storage_url, "token", "list").stdout


def test_openapi_documents_the_bearer_scheme_and_its_errors(api):
    document = httpx.get(f"{api}/openapi.json", timeout=30).json()
    assert document["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            if path != "/health":
                assert {"401", "403"} <= set(operation["responses"]), (method, path)


@pytest.mark.slow
def test_serve_beyond_loopback_without_a_token_refuses_to_start(tmp_path: Path):
    storage = f"sqlite:///{tmp_path / 'empty.db'}"
    env = {"PHASETUNE_RAY_ADDRESS": "127.0.0.1:1", "PHASETUNE_START_DASHBOARD": "false"}
    done = _cli(storage, "serve", "--host", "0.0.0.0", "--port", str(free_port()), **env)
    assert done.returncode != 0 and "token create" in done.stderr and "--insecure" in done.stderr, done.stderr
    on = _cli(storage, "serve", "--port", str(free_port()), PHASETUNE_AUTH="on", **env)
    assert on.returncode != 0 and "PHASETUNE_AUTH=on" in on.stderr, on.stderr
    dashboard = _cli(storage, "serve", "--port", str(free_port()), PHASETUNE_RAY_ADDRESS="127.0.0.1:1",
                     PHASETUNE_DASHBOARD_HOST="0.0.0.0")
    assert dashboard.returncode != 0 and "dashboard" in dashboard.stderr, dashboard.stderr
