"""The Ray Tune trainable: build the workload and plan from the trial's config, train, report every epoch."""

from __future__ import annotations

import json
from typing import Any

import ray
import torch
from ray import tune

from search_spaces.plan import build_plan
from workers.train import train
from workers.workloads import build_workload


def run_trial(config: dict[str, Any]) -> None:
    """Ray Tune function trainable. ``config`` carries the study's workload, epochs and this trial's schedule."""
    torch.set_num_threads(max(1, int(config.get("cpus", 1))))
    device = "cuda" if torch.cuda.is_available() else "cpu"  # Ray exposes a GPU only to trials that asked for one
    workload = build_workload(config["workload"]["name"], config["workload"].get("params"), config["seed"]).to(device)
    plan = build_plan(config["schedule"], config["epochs"], workload.steps_per_epoch)
    context = ray.get_runtime_context()
    where = {"ray_node_id": context.get_node_id(), "ray_node_ip": ray.util.get_node_ip_address(), "device": device}

    def report(metrics: dict[str, Any]) -> None:
        if metrics["done"]:
            # A JSON string: Tune flattens nested dicts in the results it hands to searchers.
            metrics = {**metrics, "schedule_attrs": json.dumps(plan.extra_attrs())}
        tune.report({**metrics, **where})

    train(workload, plan, config["epochs"], seed=config["seed"], on_epoch=report)
