"""The Ray Tune trainable: build the workload and plan from the trial's config, train, report every epoch.

An exception in this code is deterministic (the same config fails the same way on any node), so it is not left to
Tune, which would retry it: it is reported as the trial's last result (``TRIAL_ERROR``, with the objective metric as
NaN, since Tune refuses a result without it) and the trial ends FAIL with it as the reason. Only a trial whose
process or node is lost errors in Tune, and only that is retried.
"""

from __future__ import annotations

import itertools
import json
import math
import os
from collections.abc import Callable
from typing import Any

import ray
import torch
from ray import tune

from phasetune.search_spaces.phased import Diverged
from phasetune.search_spaces.plan import build_plan
from phasetune.workers.branching import TrialBranch
from phasetune.workers.spec import TRIAL_CONFIG, TrialConfig
from phasetune.workers.study_attrs import BRANCH, LAST_EPOCH, REUSED, SCHEDULE_ATTRS, TRIAL_ERROR, WORKER
from phasetune.workers.train import train
from phasetune.workers.workloads import build_workload, registered
from phasetune.workers.workloads.cache import PROCESS_CACHE

Report = Callable[[dict[str, Any]], None]  # hands Tune (or an in-process driver) one result
_TRIALS_HERE = itertools.count(1)  # the how-manieth trial this (reused) worker process runs


def run_trial(config: dict[str, Any]) -> None:
    """Ray Tune function trainable: ``config[TRIAL_CONFIG]`` is the trial's ``TrialConfig`` (the searcher's)."""
    trial: TrialConfig = config[TRIAL_CONFIG]
    torch.set_num_threads(max(1, int(trial.cpus)))
    device = "cuda" if torch.cuda.is_available() else "cpu"  # Ray exposes a GPU only to trials that asked for one
    where: dict[str, Any] = {"device": device}

    def report(metrics: dict[str, Any]) -> None:
        tune.report({**metrics, **where})

    try:
        context = ray.get_runtime_context()
        where.update(ray_node_id=context.get_node_id(), ray_node_ip=ray.util.get_node_ip_address())
        train_trial(trial, device, where, report)
    except Exception as err:  # noqa: BLE001  (Tune's own stop is SystemExit, which passes)
        reason = str(err) if isinstance(err, Diverged) else f"{type(err).__name__}: {err}"  # "diverged: ..." as is
        report({TRIAL_ERROR: reason, trial.metric: math.nan, "done": True})


def train_trial(trial: TrialConfig, device: str, where: dict[str, Any], report: Report) -> None:
    """The trial without Tune: build its workload and plan, resume from the store where it branches, train, hand
    ``report`` every epoch's result (the in-process path of tests and benches runs this same code). ``where`` gains
    which code and process train it."""
    entry = registered().get(trial.workload.name)
    if entry is not None:  # which code trains it on this node: a plugin may differ between nodes
        where["workload_origin"] = f"{entry.distribution} {entry.version}"
    workload = build_workload(trial.workload.name, trial.workload.params, trial.seeds, trial.data_root,
                              cache=PROCESS_CACHE).to(device)
    # A JSON string (Tune flattens nested dicts): which warm process ran it, and what its cache gave.
    where[WORKER] = json.dumps({"pid": os.getpid(), "trial": next(_TRIALS_HERE), **workload.reused})
    plan = build_plan(trial.schedule, trial.epochs, workload.steps_per_epoch)

    branch = None
    if trial.branching:
        branch = TrialBranch.open(trial.branching, trial.workload.name, trial.workload.params, trial.seeds, plan,
                                  trial.number)

    def on_epoch(metrics: dict[str, Any]) -> None:
        # JSON strings: Tune flattens nested dicts in the results it hands to searchers.
        if metrics[LAST_EPOCH]:
            metrics = {**metrics, SCHEDULE_ATTRS: json.dumps(plan.extra_attrs())}
        if branch is not None:
            metrics = {**metrics, BRANCH: json.dumps(branch.summary())}
        report(metrics)

    resume = branch.resume() if branch is not None else None
    for reused in resume.history if resume is not None else ():  # the whole curve: the prefix, as it was
        on_epoch({**reused, REUSED: True})
    train(workload, plan, trial.epochs, order_seed=trial.seeds.batch_order, on_epoch=on_epoch, probes=trial.probes(),
          checkpoint_at=branch.checkpoint_at if branch is not None else (),
          on_checkpoint=branch.save if branch is not None else None, resume=resume)
