"""The OpenAPI document states the spec language: the schedule (``search_spaces.schema``) and each workload's params
(``workers.workloads.registry``), generated from what validation reads, so the document and the checks cannot drift.

Pydantic types ``schedule`` as an object and ``WorkloadIn`` as a name and params (the checks live in the domain);
here their schemas are replaced by the full ones, under ``components/schemas``, when the document is first built.
"""

from __future__ import annotations

from fastapi import FastAPI

from phasetune.search_spaces.schema import ROOT, schedule_schema
from phasetune.workers.workloads.registry import workloads, workloads_schema

COMPONENTS = "#/components/schemas/"
# What pydantic writes for ``schedule`` (a $ref it would try to resolve itself), replaced here by the real one.
SCHEDULE_FIELD = {"type": "object", "x-phasetune": "schedule"}
WORKLOAD = "WorkloadIn"
RULES = ("A request the schema accepts can still be a 422 with type rule_error: a rule JSON Schema cannot state, "
         "across fields or against the study, the workload or the machine (e.g. transition epochs within the "
         "study's epochs, a metric the workload reports, a data path that exists).")


def publish_spec_language(app: FastAPI) -> None:
    generate = app.openapi

    def openapi() -> dict[str, object]:
        if app.openapi_schema is None:
            schema = generate()
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
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
