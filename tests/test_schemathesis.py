"""Schemathesis against the documented schema (the schedule language and each workload's params included), every
check on, over real HTTP (uvicorn, a real SQLite storage, no Ray), with auth off and on: no server error, no status
code or body the OpenAPI does not document, no schema-valid request refused but for a rule the schema cannot state."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.core import NOT_SET
from schemathesis.specs.openapi.checks import positive_data_acceptance

from phasetune.service.auth import Scope, create_token
from phasetune.service.db import make_engine, migrate
from phasetune.service.main import create_app
from phasetune.service.settings import AuthMode, Settings
from tests.conftest import served_in_thread


def accepted_or_ruled_out(ctx, response, case):
    """Schemathesis' positive_data_acceptance (a request valid by the schema is accepted), where a 422 for a rule
    the schema says it cannot state (type ``rule_error``: across fields, or against the study, workload or
    machine) also passes. A 422 of any other type, for a request the schema accepts, is the schema and the
    validation drifting apart: that fails."""
    if response.status_code == 422:
        detail = response.json().get("detail")
        if isinstance(detail, list) and detail and all(e.get("type") == "rule_error" for e in detail):
            return None
    return positive_data_acceptance(ctx, response, case)


def bodyless_post_headers(case) -> dict[str, str]:
    """A POST without a body says Content-Type: application/json all the same (docs/security.md: a rule OpenAPI
    cannot state, since it ignores a Content-Type header parameter), as the CLI does; a case with a body has the
    media type schemathesis chose."""
    return {"Content-Type": "application/json"} if case.method.upper() == "POST" and case.body is NOT_SET else {}


EXAMPLES = 25  # per operation: bounded so that it fits CI on 2 cores
SPEC_EXAMPLES = 75  # the operations whose body is the spec language (schedules, workload params) get more
SPEC_OPERATIONS = {"POST /studies", "POST /probes"}


@pytest.fixture(scope="module", params=[AuthMode.AUTO, AuthMode.ON], ids=["auth-off", "auth-on"])
def served(request, tmp_path_factory) -> Iterator[tuple[str, dict[str, str]]]:
    workdir = tmp_path_factory.mktemp("fuzz")
    storage = f"sqlite:///{workdir / 'fuzz.db'}"
    migrate(storage)
    # /tokens needs an admin token with auth off too (docs/security.md); the other routes ignore it then.
    engine = make_engine(storage)
    headers = {"Authorization": f"Bearer {create_token(engine, Scope.ADMIN, 'fuzz')[1]}"}
    engine.dispose()
    settings_ = Settings(storage_url=storage, auth=request.param, start_dashboard=False,
                         results_dir=str(workdir / "results"), artifacts_dir=str(workdir / "artifacts"),
                         data_root=str(workdir / "data"))
    with served_in_thread(create_app(settings_, run_studies=False)) as url:
        yield url, headers


def test_the_api_keeps_its_documented_contract(served):
    """Each operation in turn (schemathesis' pytest plugin does not work with this pytest): its generated cases,
    positive and negative, sent with every check on; the failures of all operations reported together."""
    url, headers = served
    api = schemathesis.openapi.from_url(f"{url}/openapi.json")
    failures: dict[str, str] = {}
    operations = 0
    for found in api.get_all_operations():
        operation = found.ok()
        operations += 1
        examples = SPEC_EXAMPLES if operation.label in SPEC_OPERATIONS else EXAMPLES

        @given(case=operation.as_strategy())
        @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case) -> None:
            case.call_and_validate(headers={**headers, **bodyless_post_headers(case)},
                                   excluded_checks=[positive_data_acceptance],
                                   additional_checks=[accepted_or_ruled_out])

        try:
            check()
        except Exception as err:  # noqa: BLE001 (every failure of every operation, reported at the end)
            failures[operation.label] = str(err)[:3000]
    assert operations >= 10
    assert not failures, "\n\n".join(f"{label}:\n{text}" for label, text in failures.items())


PROBE = {"kind": "lr_range", "workload": {"name": "quadratic"}}
# What a web page, or a careless client, sends (docs/security.md): each answer must be the one the OpenAPI documents,
# checked by every schemathesis check but positive_data_acceptance (these requests are wrong by construction).
EDGE_CASES = [
    ("text/plain body", "POST /studies", {"body": "{}", "media_type": "text/plain"}, 415),
    ("bodyless POST without JSON", "POST /studies/{study_id}/stop", {"path_parameters": {"study_id": 1}}, 415),
    ("foreign Origin", "POST /probes", {"body": PROBE, "media_type": "application/json",
                                        "headers": {"Origin": "http://evil.example"}}, 403),
    ("foreign Host", "GET /studies", {"headers": {"Host": "evil.example"}}, 400),
    ("lone surrogate", "POST /tokens", {"body": {"scope": "read", "name": "bi-\ud800"},
                                        "media_type": "application/json"}, 422),
    ("not UTF-8", "POST /probes", {"body": b'{"kind": "lr_range", "workload": {"name": "caf\xe9"}}',
                                   "media_type": "application/json"}, 422),
    ("boolean for a number", "POST /probes", {"body": {**PROBE, "resources": {"gpu": False}},
                                              "media_type": "application/json"}, 422),
    ("learning rate beyond float32", "POST /probes", {"body": {**PROBE, "options": {"lr_high": 1e308}},
                                                      "media_type": "application/json"}, 422),
]


@pytest.fixture(scope="module")
def edge(tmp_path_factory) -> Iterator[tuple[str, dict[str, str]]]:
    """The app as on loopback (auth off), with an admin token for /tokens that no fuzzed DELETE can revoke."""
    workdir = tmp_path_factory.mktemp("edge")
    storage = f"sqlite:///{workdir / 'edge.db'}"
    migrate(storage)
    engine = make_engine(storage)
    headers = {"Authorization": f"Bearer {create_token(engine, Scope.ADMIN, 'edge')[1]}"}
    engine.dispose()
    settings_ = Settings(storage_url=storage, start_dashboard=False, results_dir=str(workdir / "results"),
                         artifacts_dir=str(workdir / "artifacts"), data_root=str(workdir / "data"))
    with served_in_thread(create_app(settings_, run_studies=False)) as url:
        yield url, headers


@pytest.mark.parametrize("operation,case,code", [case[1:] for case in EDGE_CASES], ids=[case[0] for case in EDGE_CASES])
def test_the_edge_rules_answer_as_documented(edge, operation, case, code):
    url, headers = edge
    api = schemathesis.openapi.from_url(f"{url}/openapi.json")
    operations = {found.ok().label: found.ok() for found in api.get_all_operations()}
    response = operations[operation].Case(**case).call_and_validate(
        headers=headers, excluded_checks=[positive_data_acceptance])
    assert response.status_code == code, response.text


def test_tokens_need_one_and_a_405_names_every_method(edge):
    url, _ = edge
    api = schemathesis.openapi.from_url(f"{url}/openapi.json")
    operations = {found.ok().label: found.ok() for found in api.get_all_operations()}
    minted = operations["POST /tokens"].Case(body={"scope": "admin"}, media_type="application/json")
    assert minted.call_and_validate(excluded_checks=[positive_data_acceptance]).status_code == 401
    for path in ("/studies", "/tokens"):
        wrong = operations[f"POST {path}"].Case(method="PUT", body={}, media_type="application/json").call()
        assert wrong.status_code == 405 and set(", ".join(wrong.headers["allow"]).split(", ")) == {"GET", "POST"}
