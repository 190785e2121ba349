"""The OpenAPI document states the spec language: the schedule (``search_spaces.schema``) and each workload's params
(``workers.workloads.registry``), generated from what validation reads, so the document and the checks cannot drift.

Pydantic types ``schedule`` as an object and ``WorkloadIn`` as a name and params (the checks live in the domain);
here their schemas are replaced by the full ones, under ``components/schemas``, when the document is first built.
``customise_openapi`` is the app's one override of ``app.openapi``: every change to the document is a step it runs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI

from phasetune.search_spaces.schema import ROOT, schedule_schema
from phasetune.service.auth import document_without_auth
from phasetune.service.browser_guard import document_guard
from phasetune.workers.workloads.registry import workloads, workloads_schema

COMPONENTS = "#/components/schemas/"
# What pydantic writes for ``schedule`` (a $ref it would try to resolve itself), replaced here by the real one.
SCHEDULE_FIELD = {"type": "object", "x-phasetune": "schedule"}
WORKLOAD = "WorkloadIn"
RULES = ("A request the schema accepts can still be a 422 with type rule_error: a rule JSON Schema cannot state, "
         "across fields or against the study, the workload or the machine (e.g. transition epochs within the "
         "study's epochs, a metric the workload reports, a data path that exists).")


def customise_openapi(app: FastAPI, *, auth: bool) -> None:
    """The one override of ``app.openapi``: FastAPI's document, then each step in order, built once. The order
    matters: the auth step drops the 403s of an app without tokens before the guard's step adds its own 403."""
    generate = app.openapi
    steps: list[Callable[[dict[str, Any]], None]] = [publish_spec_language]
    if not auth:
        steps.append(document_without_auth)
    steps.append(document_guard)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            for step in steps:
                step(schema)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def publish_spec_language(schema: dict[str, Any]) -> None:
    """Replace the placeholders pydantic wrote for the schedule and the workload by their full schemas."""
    components = schema["components"]["schemas"]
    for model in components.values():
        for name, prop in model.get("properties", {}).items():
            if prop.get("x-phasetune") == SCHEDULE_FIELD["x-phasetune"]:
                model["properties"][name] = {"$ref": f"{COMPONENTS}{ROOT}"}
    components.update(schedule_schema(COMPONENTS)[1])
    components[WORKLOAD] = {**workloads_schema(), "title": WORKLOAD}
    metrics = sorted({metric for spec in workloads().values() for metric in spec.epoch_metrics()})
    components["ObjectiveIn"]["properties"]["metric"] |= {
        "enum": metrics, "description": "a metric the study's workload reports every epoch (GET /workloads)"}
    schema["info"]["description"] = f"{schema['info'].get('description', '')}\n\n{RULES}"
