"""A web page cannot drive the loopback API (issue 24, docs/security.md), over real HTTP (uvicorn on loopback, a real
SQLite storage, auth off as on loopback by default, no Ray): non-JSON writes are 415, a foreign ``Origin`` is 403, a
foreign ``Host`` (DNS rebinding) is 400, a token cannot be minted without one; nothing is stored in each case. Also
the edge's small rules: unencodable text and non-UTF-8 bodies are 422s naming the field, booleans are no numbers, a
learning rate float32 weights cannot take is refused, and a 405 names every method of its path."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest

from phasetune.service import auth
from phasetune.service.db import make_engine, migrate
from phasetune.service.main import create_app
from phasetune.service.settings import Settings
from tests.conftest import BIN, served_in_thread
from tests.factories import JSON, small_spec

ALLOWED_HOST = "phasetune.test"
ALLOWED_ORIGIN = "https://ui.phasetune.test"


@pytest.fixture(scope="module")
def api(tmp_path_factory) -> Iterator[tuple[str, str]]:
    """The app as `phasetune serve` runs it on loopback (auth off), with one allow-listed host and origin: its URL
    and storage."""
    workdir = tmp_path_factory.mktemp("guard")
    storage = f"sqlite:///{workdir / 'guard.db'}"
    migrate(storage)
    settings = Settings(storage_url=storage, start_dashboard=False, results_dir=str(workdir / "results"),
                        artifacts_dir=str(workdir / "artifacts"), data_root=str(workdir / "data"),
                        allowed_hosts=[ALLOWED_HOST], allowed_origins=[ALLOWED_ORIGIN])
    with served_in_thread(create_app(settings, run_studies=False, host="127.0.0.1")) as url:
        yield url, storage


@pytest.fixture
def client(api) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api[0], timeout=30) as http:
        yield http


def stored_names(client: httpx.Client) -> set[str]:
    return {study["name"] for study in client.get("/studies").json()}


def port_of(client: httpx.Client) -> int:
    port = urlsplit(str(client.base_url)).port
    assert port is not None
    return port


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data",
                                          None])
def test_a_post_that_is_not_json_is_415_and_stores_nothing(client, content_type):
    name = f"not-json-{(content_type or 'none').split('/')[-1]}"
    headers = {"Content-Type": content_type} if content_type else {}
    response = client.post("/studies", content=json.dumps(small_spec(name)), headers=headers)
    assert response.status_code == 415, response.text
    assert (content_type or "no Content-Type") in response.json()["detail"]
    assert name not in stored_names(client)


def test_a_bodyless_post_must_say_json_too(client):
    study = client.post("/studies", json=small_spec("to-stop-by-page")).json()
    refused = client.post(f"/studies/{study['id']}/stop")  # what a page's form or no-cors fetch can send
    assert refused.status_code == 415 and "even without a body" in refused.json()["detail"]
    assert client.get(f"/studies/{study['id']}").json()["status"] == "queued"
    assert client.post(f"/studies/{study['id']}/stop", headers=JSON).status_code == 202


def test_a_json_type_with_parameters_is_json(client):
    response = client.post("/studies", content=json.dumps(small_spec("charset")),
                           headers={"Content-Type": "application/json; charset=utf-8"})
    assert response.status_code == 201, response.text


@pytest.mark.parametrize("origin", ["http://evil.example", "null", "http://127.0.0.1:1", "https://127.0.0.1"])
def test_a_foreign_origin_is_403_and_stores_nothing(client, origin):
    name = f"from-{abs(hash(origin))}"
    response = client.post("/studies", json=small_spec(name), headers={"Origin": origin})
    assert response.status_code == 403, response.text
    assert origin in response.json()["detail"]
    assert client.get("/studies", headers={"Origin": origin}).status_code == 403  # nor may it read
    assert name not in stored_names(client)


def test_the_apis_own_origin_and_an_allowed_one_are_served(client):
    own = f"http://127.0.0.1:{port_of(client)}"
    assert client.post("/studies", json=small_spec("same-origin"), headers={"Origin": own}).status_code == 201
    allowed = client.post("/studies", json=small_spec("allowed-origin"), headers={"Origin": ALLOWED_ORIGIN})
    assert allowed.status_code == 201, allowed.text
    assert {"same-origin", "allowed-origin"} <= stored_names(client)


@pytest.mark.parametrize("host", ["evil.example", "evil.example:{port}", "127.0.0.1:1", "localhost", "10.0.0.1:{port}",
                                  "127.0.0.1:{port}/x", "phasetune.test.evil.example"])
def test_a_foreign_host_is_400_and_stores_nothing(client, host):
    host = host.format(port=port_of(client))
    name = f"rebound-{abs(hash(host))}"
    response = client.post("/studies", json=small_spec(name), headers={"Host": host})
    assert response.status_code == 400, response.text
    assert host in response.json()["detail"]
    assert client.get("/studies", headers={"Host": host}).status_code == 400  # a rebinding page reads nothing
    assert name not in stored_names(client)


@pytest.mark.parametrize("host", ["127.0.0.1:{port}", "localhost:{port}", "LocalHost:{port}", "[::1]:{port}",
                                  ALLOWED_HOST, f"{ALLOWED_HOST}:8443"])
def test_the_bound_address_its_loopback_names_and_allowed_hosts_are_served(client, host):
    response = client.get("/studies", headers={"Host": host.format(port=port_of(client))})
    assert response.status_code == 200, response.text


def test_a_token_is_not_minted_without_one_even_with_auth_off(client, api):
    engine = make_engine(api[1])
    try:
        before = len(auth.list_tokens(engine))
        refused = client.post("/tokens", json={"scope": "admin", "name": "by a page"})
        assert refused.status_code == 401, refused.text
        assert client.get("/tokens").status_code == 401 and client.delete("/tokens/1").status_code == 401
        assert len(auth.list_tokens(engine)) == before
        _, admin = auth.create_token(engine, auth.Scope.ADMIN, "made on the database")  # `phasetune token create`
        _, writer = auth.create_token(engine, auth.Scope.WRITE, "a write token")
        as_writer = client.post("/tokens", json={"scope": "admin"}, headers={"Authorization": f"Bearer {writer}"})
        assert as_writer.status_code == 403
        made = client.post("/tokens", json={"scope": "read", "name": "minted"},
                           headers={"Authorization": f"Bearer {admin}"})
        assert made.status_code == 201 and made.json()["token"].startswith("pt_"), made.text
    finally:
        engine.dispose()
    assert client.get("/studies").status_code == 200  # auth is off for everything else


def test_the_openapi_documents_the_rules_and_the_token_rule_with_auth_off(client):
    document = client.get("/openapi.json").json()
    assert "AdminBearer" in document["components"]["securitySchemes"]
    assert "HTTPBearer" not in document["components"]["securitySchemes"]
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            assert "PHASETUNE_ALLOWED_HOSTS" in responses["400"]["description"], (method, path)
            assert "PHASETUNE_ALLOWED_ORIGINS" in responses["403"]["description"], (method, path)
            assert ("415" in responses) == (method in ("post", "put", "patch", "delete")), (method, path)
            assert ("401" in responses) == path.startswith("/tokens"), (method, path)


LONE = '"bi-\\ud800"'  # valid JSON, but no text: a lone UTF-16 surrogate


def with_lone(template: dict) -> str:
    """``template`` as JSON, its "LONE" strings (keys too) turned into the lone surrogate."""
    return json.dumps(template).replace('"LONE"', LONE)


@pytest.mark.parametrize("path,body,loc", [
    ("/studies", with_lone({"name": "LONE"}), ["body", "name"]),
    ("/studies", with_lone(small_spec("surrogate", workload={"name": "LONE"})), ["body", "workload", "name"]),
    ("/tokens", with_lone({"scope": "read", "name": "LONE"}), ["body", "name"]),
    ("/probes", with_lone({"kind": "lr_range", "workload": {"name": "ps10", "params": {"LONE": 1}}}),
     ["body", "workload", "params", "bi-\\ud800"]),
    ("/probes", with_lone({"name": "LONE"}), ["body", "name"]),
])
def test_a_lone_surrogate_is_a_422_naming_the_field(client, api, path, body, loc):
    engine = make_engine(api[1])
    try:
        admin = auth.create_token(engine, auth.Scope.ADMIN, "surrogates")[1]
        response = client.post(path, content=body.encode(), headers={**JSON, "Authorization": f"Bearer {admin}"})
        assert response.status_code == 422, response.text
        (error,) = response.json()["detail"]
        assert error["loc"] == loc and error["type"] == "string_unicode", error
        assert not any(token.name.startswith("bi-") for token in auth.list_tokens(engine))
    finally:
        engine.dispose()
    assert "surrogate" not in stored_names(client)


def test_a_paired_surrogate_is_text_and_echoed_as_such(client):
    body = json.dumps(small_spec("paired-\U0001F600"))  # the emoji written as its surrogate pair, \\ud83d\\ude00
    assert "\\ud83d\\ude00" in body
    response = client.post("/studies", content=body.encode(), headers=JSON)
    assert response.status_code == 422, response.text  # a name is ASCII: the pattern's 422, not the surrogates'
    (error,) = response.json()["detail"]
    assert error["loc"] == ["body", "name"] and error["input"] == "paired-\U0001F600", error


def test_a_body_that_is_not_utf8_is_a_422(client):
    body = json.dumps(small_spec("latin")).replace('"latin"', '"caf\xe9"').encode("latin-1")
    response = client.post("/studies", content=body, headers=JSON)
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["body"] and "UTF-8" in response.json()["detail"][0]["msg"]


@pytest.mark.parametrize("path,body,loc", [
    ("/probes", {"kind": "lr_range", "workload": {"name": "ps10"}, "resources": {"gpu": False}},
     ["body", "resources", "gpu"]),
    ("/studies", small_spec("bool-epochs", epochs=True), ["body", "epochs"]),
    ("/studies", small_spec("bool-seed", seed=False), ["body", "seed"]),
])
def test_a_boolean_is_no_number(client, path, body, loc):
    response = client.post(path, json=body)
    assert response.status_code == 422, response.text
    assert [error["loc"] for error in response.json()["detail"]] == [loc]


def test_an_integral_float_is_still_an_integer(client):
    assert client.post("/studies", json=small_spec("float-epochs", epochs=4.0)).status_code == 201


def test_a_learning_rate_float32_cannot_take_is_a_422_naming_it(client):
    spec = small_spec("huge-lr")
    spec["schedule"]["phases"][0]["lr"] = {"low": 1e30, "high": 1e308, "log": True}
    response = client.post("/studies", json=spec)
    assert response.status_code == 422, response.text
    (error,) = response.json()["detail"]
    assert error["loc"][:4] == ["body", "schedule", "phases", 0] and "lr" in error["loc"], error
    assert "float32" in error["msg"]
    constant = client.post("/studies", json=small_spec("huge-constant", schedule={"family": "constant", "lr": 1e39}))
    assert constant.status_code == 422 and constant.json()["detail"][0]["loc"] == ["body", "schedule", "lr"]
    probe = client.post("/probes", json={"kind": "lr_range", "workload": {"name": "ps10"},
                                         "options": {"lr_high": 1e308}})
    assert probe.status_code == 422 and probe.json()["detail"][0]["loc"][-1] == "lr_high", probe.text


@pytest.mark.parametrize("path", ["/studies", "/tokens"])
def test_a_405_names_every_method_of_its_path(client, path):
    response = client.put(path, json={})
    assert response.status_code == 405
    assert set(response.headers["allow"].split(", ")) == {"GET", "POST"}


def test_the_cli_stops_a_study_through_the_guard(client, api):
    """`phasetune stop` sends a bodyless POST: it says JSON, so the guard lets it through."""
    study = client.post("/studies", json=small_spec("stopped-by-cli")).json()
    env = {**os.environ, "PHASETUNE_STORAGE_URL": api[1], "PHASETUNE_TOKEN": "",
           "PHASETUNE_TOKEN_FILE": "/nonexistent/phasetune-token"}
    done = subprocess.run([str(BIN / "phasetune"), "stop", str(study["id"]), "--api", api[0]], capture_output=True,
                          text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    assert client.get(f"/studies/{study['id']}").json()["status"] == "stopped"


@pytest.mark.parametrize("server,host,served", [
    (("::ffff:127.0.0.1", 8000), "localhost:8000", True),  # a dual-stack socket's IPv4 loopback
    (("::ffff:10.0.0.5", 8000), "10.0.0.5:8000", True),
    (("::ffff:10.0.0.5", 8000), "localhost:8000", False),  # loopback names only on loopback
    (("10.0.0.5", 8000), "10.0.0.5", False),  # no port: 80
    (None, "127.0.0.1:8000", False),  # a server that does not say where it listens: the allow-list only
    (None, ALLOWED_HOST, True),
])
def test_the_host_rule_on_addresses_a_loopback_test_cannot_reach(server, host, served):
    from starlette.datastructures import Headers

    from phasetune.service.browser_guard import BrowserGuard

    guard = BrowserGuard(None, allowed_hosts=[ALLOWED_HOST])
    scope = {"type": "http", "method": "GET", "scheme": "http", "server": server,
             "headers": [(b"host", host.encode())]}
    assert (guard.refusal(scope, Headers(scope=scope)) is None) == served


def test_an_allow_list_typo_is_an_error_at_start_up(monkeypatch):
    from pydantic import ValidationError

    monkeypatch.setenv("PHASETUNE_ALLOWED_HOSTS", "api:8000, localhost")
    monkeypatch.setenv("PHASETUNE_ALLOWED_ORIGINS", "https://ui.example")
    settings = Settings()
    assert settings.allowed_hosts == ["api:8000", "localhost"] and settings.allowed_origins == ["https://ui.example"]
    for name, value in (("PHASETUNE_ALLOWED_HOSTS", "http://api:8000"), ("PHASETUNE_ALLOWED_ORIGINS", "ui.example"),
                        ("PHASETUNE_ALLOWED_ORIGINS", "null")):
        monkeypatch.setenv(name, value)
        with pytest.raises(ValidationError, match=name.removeprefix("PHASETUNE_").lower()):
            Settings()
        monkeypatch.delenv(name)
