"""Running the regime probes (issue 5) on a workload: once per study in the driver, or on demand over REST.

``run_probes`` builds the workload exactly as a trial would (same name, params and seed, so the same initial
weights) and runs the curvature probe and/or the LR range test on it. ``probe_remote`` runs it as a Ray task with
the resources a trial of the study gets, so the probe sees the device the trials will train on. ``ensure_units``
is the driver's step: probe once, keep the results in the study's user attrs, hand the units to the searcher.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

import ray
import torch

from search_spaces import presets
from search_spaces.probes import estimate_curvature, lr_range_test, probe_batch, probe_units, result_to_dict
from search_spaces.probes.curvature import PROBE_BATCH
from workers import study_attrs
from workers.workloads import build_workload

KINDS = ("curvature", "lr_range")
PROBES = "phasetune:probes"  # study attr: {"curvature": {...lambda0, lr_crit...}, "lr_range": {...}, "units": {...}}
# Options of each probe and their defaults (None: the probe's own default). Everything else is refused.
OPTIONS: dict[str, dict[str, Any]] = {
    "curvature": {"probe_batch": PROBE_BATCH, "iters": 50, "tol": 1e-3, "mode": "train"},
    "lr_range": {"lr_low": 1e-7, "lr_high": 10.0, "steps": 100, "batch_size": None},
}


class ProbeFailed(RuntimeError):
    """The probes ran but did not give a unit the study's schedule needs."""


def run_probes(workload: Mapping[str, Any], seed: int, kinds: Iterable[str] = KINDS,
               options: Mapping[str, Any] | None = None, device: str | None = None) -> dict[str, Any]:
    """Run the probes ``kinds`` on the workload ``{"name", "params"}`` built with ``seed``.

    Args:
        workload: the study spec's ``workload`` (name and params; defaults are filled in).
        seed: the workload's seed: its data split and initial weights, hence λ0.
        kinds: any of ``KINDS``.
        options: probe options (``OPTIONS``); ``lr_range.batch_size`` defaults to the workload's batch size.
        device: "cpu" or "cuda"; default: CUDA when this process sees a GPU.

    Returns:
        ``{kind: result_to_dict(result) + {"seconds"}, ..., "units": probe_units(...), "device": device}``.
    """
    kinds = tuple(kinds)
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown probe kind {sorted(unknown)[0]!r}; one of {KINDS}")
    opts = {**OPTIONS["curvature"], **OPTIONS["lr_range"], **(options or {})}
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    w = build_workload(workload["name"], workload.get("params"), seed).to(device)
    out: dict[str, Any] = {"device": device}
    curvature = range_test = None
    if "curvature" in kinds:
        started = time.perf_counter()
        x, y = probe_batch(w.train_x, w.train_y, max_examples=int(opts["probe_batch"]), seed=seed)
        curvature = estimate_curvature(w.model, x, y, w.loss_kind, iters=int(opts["iters"]), tol=float(opts["tol"]),
                                       mode=opts["mode"], seed=seed)
        out["curvature"] = {**result_to_dict(curvature), "seconds": time.perf_counter() - started}
    if "lr_range" in kinds:
        started = time.perf_counter()
        range_test = lr_range_test(w.model, w.train_x, w.train_y, w.loss_kind, lr_low=float(opts["lr_low"]),
                                   lr_high=float(opts["lr_high"]), steps=int(opts["steps"]),
                                   batch_size=opts["batch_size"] or w.batch_size, seed=seed)
        out["lr_range"] = {**result_to_dict(range_test), "seconds": time.perf_counter() - started}
    out["units"] = probe_units(curvature, range_test)
    return out


@ray.remote(max_retries=1)
def _probe_task(workload: Mapping[str, Any], seed: int, kinds: tuple[str, ...], options: Mapping[str, Any] | None,
                threads: int) -> dict[str, Any]:
    torch.set_num_threads(max(1, threads))
    # Ray exposes a GPU only to tasks that asked for one, as for trials.
    return run_probes(workload, seed, kinds, options)


def probe_remote(workload: Mapping[str, Any], seed: int, kinds: Iterable[str] = KINDS,
                 options: Mapping[str, Any] | None = None, cpus: float = 1, gpus: float = 0,
                 timeout: float | None = None) -> dict[str, Any]:
    """``run_probes`` as a Ray task with a trial's resources (``num_gpus`` as the study's trials); waits for it."""
    ref = _probe_task.options(num_cpus=cpus, num_gpus=gpus).remote(dict(workload), seed, tuple(kinds),
                                                                   dict(options or {}), int(cpus))
    return ray.get(ref, timeout=timeout)


def ensure_units(study: Any, spec: study_attrs.StudySpec) -> dict[str, float]:
    """The study's units: probed once (the first time its driver starts) and kept in its user attrs.

    Runs only the probes the schedule needs (the curvature probe always: λ0 is cheap and worth keeping).
    Raises ``ProbeFailed`` if a needed unit came out non-finite.
    """
    stored = study.user_attrs.get(study_attrs.UNITS)
    needed = presets.required_units(spec.schedule)
    if stored is not None or not needed:
        return dict(stored or {})
    kinds = ("curvature",) + (("lr_range",) if "lr_div" in needed else ())
    probes = probe_remote(spec.workload, spec.seed, kinds, cpus=spec.cpus, gpus=spec.gpus)
    missing = sorted(needed - set(probes["units"]))
    if missing:
        summary = {k: probes.get(k, {}).get(f) for k, f in (("curvature", "lambda0"), ("lr_range", "lr_div"))}
        raise ProbeFailed(f"the probes gave no finite {missing} for workload {spec.workload['name']!r} ({summary})")
    study.set_user_attr(PROBES, probes)
    study.set_user_attr(study_attrs.UNITS, probes["units"])
    return dict(probes["units"])
