"""Schemathesis against the documented schema (the schedule language and each workload's params included), every
check on, over real HTTP (uvicorn, a real SQLite storage, no Ray), with auth off and on: no server error, no status
code or body the OpenAPI does not document, no schema-valid request refused but for a rule the schema cannot state."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
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


EXAMPLES = 25  # per operation: bounded so that it fits CI on 2 cores
SPEC_EXAMPLES = 75  # the operations whose body is the spec language (schedules, workload params) get more
SPEC_OPERATIONS = {"POST /studies", "POST /probes"}


@pytest.fixture(scope="module", params=[AuthMode.AUTO, AuthMode.ON], ids=["auth-off", "auth-on"])
def served(request, tmp_path_factory) -> Iterator[tuple[str, dict[str, str]]]:
    workdir = tmp_path_factory.mktemp("fuzz")
    storage = f"sqlite:///{workdir / 'fuzz.db'}"
    migrate(storage)
    headers = {}
    if request.param is AuthMode.ON:
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
            case.call_and_validate(headers=headers, excluded_checks=[positive_data_acceptance],
                                   additional_checks=[accepted_or_ruled_out])

        try:
            check()
        except Exception as err:  # noqa: BLE001 (every failure of every operation, reported at the end)
            failures[operation.label] = str(err)[:3000]
    assert operations >= 10
    assert not failures, "\n\n".join(f"{label}:\n{text}" for label, text in failures.items())
