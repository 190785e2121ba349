"""The workload registry: every ``WorkloadSpec`` that an installed distribution declares under the entry-point group
``phasetune.workloads`` (phasetune's own included), and the one way to check params and build a workload.

Read once per process (install a plugin, then start the API and the Ray nodes); ``reload()`` reads again. A plugin
that fails to load is listed with its error instead of taking the others down.
"""

from __future__ import annotations

import functools
import importlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import IterableDataset

from phasetune.search_spaces.checks import integral
from phasetune.search_spaces.errors import RuleError, SpecError
from phasetune.workers.seeding import Seeds, seeded_init
from phasetune.workers.workloads.cache import WorkloadCache, params_key
from phasetune.workers.workloads.contract import Data, WorkloadSpec
from phasetune.workers.workloads.paths import default_data_root, resolve_under
from phasetune.workers.workloads.runtime import Workload

GROUP = "phasetune.workloads"


@dataclass(frozen=True)
class Registered:
    """One entry point of the group: its spec, or why it could not be loaded."""

    name: str
    distribution: str
    version: str
    spec: WorkloadSpec | None = None
    error: str | None = None


OWN = "phasetune"


@functools.cache
def registered() -> dict[str, Registered]:
    """Every entry point of ``GROUP``, by name (loaded or not). Where two distributions declare one name, the
    first (phasetune's own first, then by distribution name) keeps it; the other is listed as ``name (dist)``
    with an error, so a plugin can never replace or knock out a workload already there."""
    found: dict[str, Registered] = {}

    def order(ep: Any) -> tuple[str, bool, str]:
        dist = ep.dist.name if ep.dist is not None else "?"
        return ep.name, dist != OWN, dist

    for ep in sorted(entry_points(group=GROUP), key=order):
        dist = ep.dist.name if ep.dist is not None else "?"
        version = ep.dist.version if ep.dist is not None else "?"
        if ep.name in found:
            taken = f"the name is taken by {found[ep.name].distribution}; rename it in {dist}'s entry points"
            found[f"{ep.name} ({dist})"] = Registered(ep.name, dist, version, error=taken)
            continue
        try:
            spec = ep.load()
            if callable(spec) and not isinstance(spec, WorkloadSpec):
                spec = spec()
            if not isinstance(spec, WorkloadSpec):
                raise TypeError(f"{ep.value} is a {type(spec).__name__}, not a WorkloadSpec")
            if spec.name != ep.name:
                raise ValueError(f"{ep.value} is named {spec.name!r}, but registered as {ep.name!r}")
            found[ep.name] = Registered(ep.name, dist, version, spec=spec)
        except Exception as err:  # noqa: BLE001  (one broken plugin must not hide the others)
            found[ep.name] = Registered(ep.name, dist, version, error=f"{type(err).__name__}: {err}")
    return found


def reload() -> None:
    """Read the entry points again (after installing a plugin into this running process's environment)."""
    importlib.invalidate_caches()
    registered.cache_clear()


def workloads() -> dict[str, WorkloadSpec]:
    """The workloads that loaded, by name."""
    return {name: entry.spec for name, entry in registered().items() if entry.spec is not None}


def workloads_schema() -> dict[str, Any]:
    """The spec's ``workload`` as JSON Schema: one option per loaded workload, its params with their kinds and
    bounds (what ``resolve`` checks; a workload's cross-parameter rules and paths are checked against the machine)."""
    options = []
    for name, spec in sorted(workloads().items()):
        params = {"type": "object", "additionalProperties": False,
                  "properties": {key: param.json_schema() for key, param in spec.params.items()}}
        required = [key for key, param in spec.params.items() if param.required]
        if required:
            params["required"] = required
        option: dict[str, Any] = {"type": "object", "title": name, "additionalProperties": False,
                                  "required": ["name"] + (["params"] if required else []),
                                  "properties": {"name": {"const": name}, "params": params}}
        if spec.description:
            option["description"] = spec.description
        options.append(option)
    return {"anyOf": options}


def resolve(name: Any, params: Any, data_root: str | Path | None = None) -> tuple[WorkloadSpec, dict[str, Any]]:
    """The registered spec and its params with defaults filled in (paths as given, relative to the data root).

    Raises SpecError located relative to the spec's ``workload`` (``("name",)``, ``("params", <param>)``): an
    unknown workload lists the registered ones.
    """
    spec, full, _ = resolve_runtime(name, params, data_root)
    return spec, full


def resolve_runtime(name: Any, params: Any,
                    data_root: str | Path | None = None) -> tuple[WorkloadSpec, dict[str, Any], dict[str, Any]]:
    """``resolve``, plus the params as the workload's functions get them (``runtime_params``), checked once."""
    available = workloads()
    if isinstance(name, str) and name not in available:  # installed since this process read the entry points?
        reload()
        available = workloads()
    if not isinstance(name, str) or name not in available:
        broken = registered().get(name) if isinstance(name, str) else None
        why = f" (its plugin failed to load: {broken.error})" if broken is not None and broken.error else ""
        raise SpecError(("name",), f"unknown workload {name!r}{why}; one of {sorted(available)}")
    spec = available[name]
    missing = spec.unavailable() if spec.unavailable is not None else None
    if missing:
        raise RuleError(("name",), f"workload {name!r} cannot run here: {missing}")
    given = dict(params or {})
    unknown = set(given) - set(spec.params)
    if unknown:
        raise SpecError(("params", sorted(unknown)[0]),
                        f"unknown parameter of {name!r}; expected {sorted(spec.params)}")
    for key, param in spec.params.items():
        if key not in given and param.required:
            raise SpecError(("params", key), f"is required by workload {name!r}: {param.help}")
    full = {**spec.defaults, **given}
    for key, value in full.items():
        try:
            spec.params[key].check(value, key)
        except SpecError as err:
            raise err.under("params") from None
        if spec.params[key].type_name == "int":
            full[key] = integral(value)  # 64.0 is 64 (JSON Schema calls both integers)
    return spec, full, runtime_params(spec, full, data_root)  # paths under the root, cross-parameter rules


def runtime_params(spec: WorkloadSpec, params: Mapping[str, Any], data_root: str | Path | None) -> dict[str, Any]:
    """``params`` as the workload's functions get them: every ``path`` resolved under the data root (checked).

    What fails here depends on the machine (a path) or relates params (the workload's ``validate``): a RuleError."""
    root = Path(data_root) if data_root is not None else default_data_root()
    out = dict(params)
    try:
        for key, param in spec.params.items():
            if param.type_name == "path":
                out[key] = str(resolve_under(root, params[key], (key,)))
        if spec.validate is not None:
            spec.validate(out)
    except SpecError as err:
        raise RuleError.of(err).under("params") from None
    return out


def steps_per_epoch(name: str, params: Mapping[str, Any] | None, data_root: str | Path | None = None) -> int:
    """The workload's optimizer steps per epoch, from its params alone (nothing is built)."""
    spec, _, runtime = resolve_runtime(name, params, data_root)
    return workload_steps(spec, runtime)


def workload_steps(spec: WorkloadSpec, runtime: Mapping[str, Any]) -> int:
    return math.ceil(spec.train_size(runtime) / spec.batch_size(runtime))


def build_workload(name: str, params: Mapping[str, Any] | None, seed: int | Seeds,
                   data_root: str | Path | None = None, cache: WorkloadCache | None = None) -> Workload:
    """Build the workload: its data from ``seed.data``, its model under ``seed.init`` (an int seeds both).

    With a ``cache`` (a warm trial worker's), data and initial model that an earlier trial built from the same
    workload, params and seeds are reused (``Workload.reused`` says which).
    """
    seeds = seed if isinstance(seed, Seeds) else Seeds.shared(seed)
    spec, _, runtime = resolve_runtime(name, params, data_root)
    cache = cache if cache is not None else WorkloadCache(entries=0)

    def load_data() -> Data:
        with seeded_init(seeds.data, "data"):
            data = spec.data(runtime, seeds.data)
        _check_data(spec, runtime, data)
        return data

    def build_model() -> torch.nn.Module:
        with seeded_init(seeds.init):
            return spec.model(runtime, data)

    data_key = (spec.name, params_key(runtime), seeds.data)
    data, data_reused = cache.data(data_key, load_data)
    model, model_reused = cache.model((*data_key, seeds.init), build_model)
    groups = spec.param_groups(model, runtime) if spec.param_groups is not None else None
    if groups is not None:
        _check_groups(spec.name, model, groups)
    return Workload(spec=spec, params=runtime, model=model, data=data, batch_size=spec.batch_size(runtime),
                    param_groups=groups, device=torch.device("cpu"),
                    reused={"data": data_reused, "model": model_reused})


def _check_data(spec: WorkloadSpec, runtime: Mapping[str, Any], data: Data) -> None:
    """What the contract promises of ``data()``: map-style splits, a test split iff declared, and as many training
    examples as ``train_size`` said (the steps per epoch every schedule of the study was checked against)."""
    for name in ("train", "val", "test"):
        split = getattr(data, name)
        if isinstance(split, IterableDataset):
            raise TypeError(f"workload {spec.name!r}: its {name} split is an IterableDataset; the contract takes "
                            "tensors (TensorSplit) or a map-style Dataset (__len__ and __getitem__)")
    if spec.has_test != (data.test is not None):
        raise ValueError(f"workload {spec.name!r} declares has_test={spec.has_test} but its data() gave "
                         f"{'a' if data.test is not None else 'no'} test split")
    if len(data.train) != spec.train_size(runtime):
        raise ValueError(f"workload {spec.name!r}: train_size says {spec.train_size(runtime)} examples, its data() "
                         f"gave {len(data.train)} (the data changed since the study was submitted?)")


def _check_groups(name: str, model: torch.nn.Module, groups: list[dict[str, Any]]) -> None:
    """The workload's param groups hold every trainable parameter of its model exactly once."""
    seen = [id(p) for group in groups for p in group["params"]]
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    if len(seen) != len(set(seen)) or set(seen) != trainable:
        raise ValueError(f"workload {name!r}: param_groups must hold every trainable parameter exactly once "
                         f"({len(set(seen) & trainable)} of {len(trainable)} held, {len(seen) - len(set(seen))} twice)")
