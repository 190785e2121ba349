"""Running the regime probes on a workload: once per study in the driver, or on demand over REST.

``run_probes`` builds the workload as the study's trials do (its params, the study's seed: under the default seed
policy the very weights every trial starts from) and runs the curvature probe and/or the LR range test on it.
``probe_remote`` runs it as a Ray task with the resources a trial of the study gets, so the probe sees the device
the trials will train on. ``ensure_units`` is the driver's step: probe once, keep the results in the study's user
attrs, hand the units to the searcher.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, replace
from typing import Any

import ray
import torch

from phasetune.search_spaces import presets
from phasetune.search_spaces.probes import (
    LOSS_KINDS,
    CurvatureOptions,
    LRRangeOptions,
    estimate_curvature,
    lr_range_test,
    probe_units,
    result_to_dict,
)
from phasetune.workers import study_attrs
from phasetune.workers.probe_names import ProbeKind
from phasetune.workers.spec import StudySpec
from phasetune.workers.workloads import build_workload


class ProbeFailed(RuntimeError):
    """The probes ran but did not give a unit the study's schedule needs."""


class ProbeUnsupported(ValueError):
    """The workload's loss is not one whose output Hessian the curvature probe knows (its ``loss_kind`` is None)."""


def check_supported(kind: ProbeKind, workload_name: str, loss_kind: str | None) -> None:
    if kind is ProbeKind.CURVATURE and loss_kind is None:
        raise ProbeUnsupported(
            f"workload {workload_name!r} has a loss the curvature probe does not know (it declares no loss_kind; "
            f"the probe supports {list(LOSS_KINDS)}): lr_crit cannot be measured, the LR range test (lr_div) can")


def run_probes(workload: Mapping[str, Any], seed: int, kinds: Iterable[ProbeKind] = tuple(ProbeKind),
               curvature: CurvatureOptions | None = None, lr_range: LRRangeOptions | None = None,
               device: str | None = None, data_root: str | None = None) -> dict[str, Any]:
    """Run the probes ``kinds`` on the workload ``{"name", "params"}`` built with ``seed`` (every stream).

    Args:
        workload: the workload's name and params (defaults are filled in).
        seed: the study's seed: the workload's data and initial weights, hence λ0.
        kinds: which probes.
        curvature: the curvature probe's options (default: its defaults).
        lr_range: the range test's options; its ``batch_size`` defaults to the workload's.
        device: "cpu" or "cuda"; default: CUDA when this process sees a GPU.
        data_root: where the workload's ``path`` params are (the study's data root).

    Returns:
        ``{kind: result_to_dict(result) + {"seconds"}, ..., "units": probe_units(...), "device": device}``.
    """
    kinds = {ProbeKind(kind) for kind in kinds}
    curvature, lr_range = curvature or CurvatureOptions(), lr_range or LRRangeOptions()
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    w = build_workload(workload["name"], workload.get("params"), seed, data_root).to(device)
    for kind in kinds:
        check_supported(kind, w.name, w.loss_kind)
    out: dict[str, Any] = {"device": device}
    curvature_result = range_result = None
    train = w.data.train
    if ProbeKind.CURVATURE in kinds:
        started = time.perf_counter()
        x, y = w.sample(train, curvature.probe_batch, seed)
        curvature_result = estimate_curvature(w.model, x, y, w.loss_kind, iters=curvature.iters, tol=curvature.tol,
                                              mode=curvature.mode, seed=seed)
        out["curvature"] = {**result_to_dict(curvature_result), "seconds": time.perf_counter() - started}
    if ProbeKind.LR_RANGE in kinds:
        started = time.perf_counter()
        batch_size = lr_range.batch_size or w.batch_size
        # As many examples as the ramp's steps visit (the whole split when it is smaller), on either data path.
        x, y = w.sample(train, lr_range.steps * batch_size, seed)
        range_result = replace(lr_range_test(w.model, x, y, w.loss, lr_low=lr_range.lr_low, lr_high=lr_range.lr_high,
                                             steps=lr_range.steps, batch_size=batch_size, seed=seed),
                               loss_kind=w.loss_kind or "custom")  # it ran the workload's own loss
        out["lr_range"] = {**result_to_dict(range_result), "seconds": time.perf_counter() - started}
    out["units"] = probe_units(curvature_result, range_result)
    return out


@ray.remote(max_retries=1)
def _probe_task(workload: Mapping[str, Any], seed: int, kinds: tuple[ProbeKind, ...], curvature: dict[str, Any],
                lr_range: dict[str, Any], threads: int, data_root: str | None) -> dict[str, Any]:
    torch.set_num_threads(max(1, threads))
    # Ray exposes a GPU only to tasks that asked for one, as for trials.
    return run_probes(workload, seed, kinds, CurvatureOptions(**curvature), LRRangeOptions(**lr_range),
                      data_root=data_root)


def probe_remote(workload: Mapping[str, Any], seed: int, kinds: Iterable[ProbeKind] = tuple(ProbeKind),
                 curvature: CurvatureOptions | None = None, lr_range: LRRangeOptions | None = None,
                 cpus: float = 1, gpus: float = 0, timeout: float | None = None,
                 data_root: str | None = None) -> dict[str, Any]:
    """``run_probes`` as a Ray task with a trial's resources (``num_gpus`` as the study's trials); waits for it."""
    return ray.get(start_probe(workload, seed, kinds, curvature, lr_range, cpus, gpus, data_root), timeout=timeout)


def start_probe(workload: Mapping[str, Any], seed: int, kinds: Iterable[ProbeKind] = tuple(ProbeKind),
                curvature: CurvatureOptions | None = None, lr_range: LRRangeOptions | None = None,
                cpus: float = 1, gpus: float = 0, data_root: str | None = None) -> ray.ObjectRef:
    """``probe_remote`` without the wait: the task's ref (``ray.get`` it for ``run_probes``' result)."""
    return _probe_task.options(num_cpus=cpus, num_gpus=gpus).remote(
        dict(workload), seed, tuple(kinds), asdict(curvature or CurvatureOptions()),
        asdict(lr_range or LRRangeOptions()), int(cpus), data_root)


def ensure_units(study: Any, spec: StudySpec) -> dict[str, float]:
    """The study's units: probed once (the first time its driver starts) and kept in its user attrs.

    Runs only the probes the schedule needs (the curvature probe always: λ0 is cheap and worth keeping).
    Raises ``ProbeFailed`` if a needed unit came out non-finite.
    """
    stored = study.user_attrs.get(study_attrs.UNITS)
    needed = presets.required_units(spec.schedule)
    if stored is not None or not needed:
        return dict(stored or {})
    kinds = (ProbeKind.CURVATURE,) + ((ProbeKind.LR_RANGE,) if "lr_div" in needed else ())
    workload = {"name": spec.workload.name, "params": dict(spec.workload.params)}
    resources = spec.resources_per_trial
    probes = probe_remote(workload, spec.seed, kinds, cpus=resources.cpu, gpus=resources.gpu, data_root=spec.data_root)
    missing = sorted(needed - set(probes["units"]))
    if missing:
        summary = {k: probes.get(k, {}).get(f) for k, f in (("curvature", "lambda0"), ("lr_range", "lr_div"))}
        raise ProbeFailed(f"the probes gave no finite {missing} for workload {spec.workload.name!r} ({summary})")
    study.set_user_attr(study_attrs.PROBES, probes)
    study.set_user_attr(study_attrs.UNITS, probes["units"])
    return dict(probes["units"])
