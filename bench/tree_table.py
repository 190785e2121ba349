"""Tabulate a two-phase schedule tree (issue 23, step 1): every trunk and every leaf of a gridded space, trained once
through the real training loop, checkpoint store and resume, so that search methods can be simulated on the table.

The space is a tree. A **trunk** is one phase-1 setting (an lr on a grid in units of the seed's ``lr_crit``, no
momentum) trained to the latest transition candidate, with the cooldown probe (``workers/cooldown.py``, the share
``PROBE_FRACTION`` of the steps done, the tree's default) after every epoch up to the latest candidate
(``trunk_probe_epochs``), and a checkpoint in a ``workers.checkpoints.CheckpointStore`` at the end of each
transition candidate's last epoch, under the key ``prefix_key`` gives that prefix (a leaf finds it only if its own
plan's prefix coincides). A **leaf** (a configuration: a trunk, a transition epoch t, a phase-2 setting) resumes
from its trunk's checkpoint at t and trains to the last epoch, so the table holds exactly what a live trial of that
configuration reports, epoch by epoch: the trunk's epochs before t, then the leaf's (``trial_history``). Resuming is
exact (bit-identical on CPU, which ``tests/test_bench_tree.py`` checks against the same schedule from scratch) and a
probe changes nothing it probes. A trunk that diverges before t leaves its leaves at t without epochs of their own:
a live trial of them would diverge in the same epoch. Every trial of a seed uses that seed for data, initial weights
and batch order (the study's default seed policy), so a table seed is a study seed.

The table is one gzip'd JSON per workload (``bench/tables/<name>.json.gz``): ``meta`` (workload, params, space,
epochs, seeds, the commit it was built at and whether the tree was dirty, the seconds each seed took, the command
that rebuilds it, versions, CPUs) and per seed its probe units, trunks and leaves. It is rewritten after every seed,
so a build that is cut short leaves a table of the seeds it finished.

Run: ``.venv/bin/python bench/tree_table.py --workload ps10 --params '{"noise": 0.1}' --epochs 12 --seeds 10
--workers 2 --out bench/tables/ps10.json.gz`` (``--space GRID.json`` for another grid: ``Grid`` names the keys).
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import json
import multiprocessing
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import optuna
import torch

from phasetune.search_spaces import SpecError, build_plan, sample_schedule, validate_schedule
from phasetune.search_spaces.plan import Plan
from phasetune.workers.checkpoints import CheckpointStore, prefix_key
from phasetune.workers.seeding import SeedPolicy, trial_seeds
from phasetune.workers.study_attrs import COOLDOWN_PREFIX, LARGE_STEP
from phasetune.workers.train import Checkpoint, Probes, train
from phasetune.workers.tree import FixedProbes, TreeOptions
from phasetune.workers.workloads import build_workload, steps_per_epoch, workloads
from phasetune.workers.workloads.cache import WorkloadCache

FORMAT = "phasetune-tree-table/1"
PROBE_FRACTION = TreeOptions().cooldown_fraction  # the tree's probe (= schedule_aware's, which built the tables)
STORE_BYTES = 1 << 40  # the tabulator's store keeps every checkpoint it wrote (a temporary directory)
ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Grid:
    """A gridded two-phase space: phase 1 SGD at ``phase1_lr`` x unit with ``phase1_momentum``; the transition at
    one of ``transitions`` (epochs); phase 2 SGD at ``phase2_effective_lr`` x unit (lr / (1 - momentum)) with one
    of ``phase2_momentum``. A configuration is (trunk = phase-1 lr index, transition index, phase-2 index), phase-2
    settings in the order of ``itertools.product(phase2_effective_lr, phase2_momentum)``."""

    phase1_lr: tuple[float, ...]
    transitions: tuple[int, ...]
    phase2_effective_lr: tuple[float, ...]
    phase2_momentum: tuple[float, ...]
    phase1_momentum: float = 0.0
    unit: str = "lr_crit"

    @classmethod
    def default(cls, epochs: int) -> Grid:
        """6 log-spaced phase-1 lrs in [0.1, 1] x lr_crit, transitions at 0.2, 0.4, 0.6, 0.8 x epochs, phase 2 at
        effective lrs 0.003 or 0.03 x lr_crit with momentum 0.9 or 0.98: 96 configurations. The ranges are
        ``bench/search_efficiency.py``'s default space, put on a grid; with 12 epochs (the ps10 example's) a seed
        is about 830 epochs (probes included): 10 seeds of ps10 fit well inside 30 minutes of 2 quiet cores."""
        lrs = tuple(round(10 ** (-1 + k / 5), 4) for k in range(6))
        transitions = tuple(sorted({max(1, min(epochs - 1, round(f * epochs))) for f in (0.2, 0.4, 0.6, 0.8)}))
        return cls(lrs, transitions, (0.003, 0.03), (0.9, 0.98))

    @classmethod
    def parse(cls, raw: Mapping[str, Any], epochs: int) -> Grid:
        """From JSON (``asdict``'s keys); ValueError naming the key."""
        unknown = set(raw) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown grid key(s) {sorted(unknown)}; a grid takes {sorted(cls.__dataclass_fields__)}")
        lists = {k: tuple(raw[k]) for k in ("phase1_lr", "transitions", "phase2_effective_lr", "phase2_momentum")
                 if k in raw}
        grid = cls(**{**asdict(cls.default(epochs)), **raw, **lists})
        for key in ("phase1_lr", "transitions", "phase2_effective_lr", "phase2_momentum"):
            if not getattr(grid, key):
                raise ValueError(f"{key}: must be a non-empty list")
        if list(grid.transitions) != sorted(set(grid.transitions)) or not all(
                isinstance(t, int) and 1 <= t <= epochs - 1 for t in grid.transitions):
            raise ValueError(f"transitions: increasing integer epochs in [1, {epochs - 1}], got {grid.transitions}")
        return grid

    @property
    def phase2(self) -> list[tuple[float, float]]:
        return list(itertools.product(self.phase2_effective_lr, self.phase2_momentum))

    def configs(self) -> list[tuple[int, int, int]]:
        """Every configuration as (trunk, transition index, phase-2 index), in a fixed order (the table's)."""
        return list(itertools.product(range(len(self.phase1_lr)), range(len(self.transitions)),
                                      range(len(self.phase2))))

    def space(self, trunk: int, transition: int, phase2: int) -> dict[str, Any]:
        """The configuration as a phases space of constants in the grid's unit (what a study spec would hold)."""
        effective_lr, momentum = self.phase2[phase2]

        def at(value: float) -> dict[str, Any]:  # a one-point range: the only way a value takes a unit
            return {"low": value, "high": value, "unit": self.unit}

        return {"family": "phases", "phases": [
            {"optimizer": "sgd", "lr": at(self.phase1_lr[trunk]), "momentum": self.phase1_momentum},
            {"optimizer": "sgd", "effective_lr": at(effective_lr), "momentum": momentum}],
            "transition_epochs": [self.transitions[transition]]}

    def schedule(self, trunk: int, transition: int, phase2: int, epochs: int,
                 units: Mapping[str, float]) -> dict[str, Any]:
        """The concrete schedule, expanded by the service's own sampler with the seed's units."""
        return sample_schedule(AtLow(), self.space(trunk, transition, phase2), epochs, units)


class AtLow:
    """A TrialLike for a space of one-point ranges: every parameter at its (only) value."""

    def suggest_float(self, name: str, low: float, high: float, *, step: float | None = None,
                      log: bool = False) -> float:
        return low

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False) -> int:
        return low

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        return choices[0]


@dataclass(frozen=True)
class Setup:
    workload: str
    params: Mapping[str, Any]
    grid: Grid
    epochs: int
    steps_per_epoch: int
    device: str = "cpu"  # "cuda": a GPU's tables (not bit-identical to the CPU's, so recorded in the meta)


def trunk_probe_epochs(grid: Grid) -> frozenset[int]:
    """After how many epochs a trunk is probed: every epoch up to the latest transition candidate (the prefix
    decisions read those at the candidates, P4 compares them with the raw values)."""
    return frozenset(range(1, grid.transitions[-1] + 1))


def _plan(setup: Setup, config: tuple[int, int, int], units: Mapping[str, float]) -> Plan:
    return build_plan(setup.grid.schedule(*config, setup.epochs, units), setup.epochs, setup.steps_per_epoch)


def tabulate_seed(setup: Setup, seed: int) -> dict[str, Any]:
    """One seed's table: its probe units, every trunk and every leaf (see the module docstring)."""
    from phasetune.workers.probe_names import ProbeKind
    from phasetune.workers.probing import run_probes  # imports Ray (not started): only in the jobs

    torch.set_num_threads(1)
    started, cpu = time.perf_counter(), time.process_time()
    units = run_probes({"name": setup.workload, "params": dict(setup.params)}, seed, kinds=[ProbeKind.CURVATURE],
                       device=setup.device)["units"]
    grid, seeds, cache = setup.grid, trial_seeds(seed, SeedPolicy(), 0), WorkloadCache()
    ends = [t - 1 for t in grid.transitions]  # 0-based epochs whose end is a transition candidate
    trunks: list[dict[str, Any]] = []
    leaves: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="phasetune-tree-") as root:
        store = CheckpointStore(root, STORE_BYTES)
        for trunk in range(len(grid.phase1_lr)):
            plan = _plan(setup, (trunk, len(grid.transitions) - 1, 0), units)  # the latest transition
            keys = {epoch: prefix_key(setup.workload, setup.params, seeds, plan, epoch) for epoch in ends}

            def save(checkpoint: Checkpoint, keys: dict[int, str | None] = keys) -> None:
                store.put(str(keys[checkpoint.epoch]), checkpoint)

            workload = build_workload(setup.workload, dict(setup.params), seeds, cache=cache).to(setup.device)
            history = train(workload, plan, setup.epochs, order_seed=seeds.batch_order,
                            probes=FixedProbes(trunk_probe_epochs(grid), PROBE_FRACTION),
                            checkpoint_at=set(ends),
                            on_checkpoint=save, on_epoch=lambda r: int(r["epoch"]) >= grid.transitions[-1])
            history = history[:grid.transitions[-1]]  # the one epoch past the last checkpoint is phase 2's
            trunks.append({"phase1_lr": grid.phase1_lr[trunk], "history": history})
            for transition, phase2 in itertools.product(range(len(grid.transitions)), range(len(grid.phase2))):
                t = grid.transitions[transition]
                leaf: dict[str, Any] = {"trunk": trunk, "transition": transition, "transition_epoch": t,
                                        "phase2": phase2, "history": []}
                leaves.append(leaf)
                if len(history) < t or history[t - 1]["last_epoch"]:
                    continue  # the trunk ended (diverged) before its epoch t: so does the leaf
                plan = _plan(setup, (trunk, transition, phase2), units)
                stored = store.get(str(prefix_key(setup.workload, setup.params, seeds, plan, t - 1)))
                if stored is None:
                    raise RuntimeError(f"seed {seed}: no trunk checkpoint for leaf {leaf} (prefix keys differ)")
                workload = build_workload(setup.workload, dict(setup.params), seeds, cache=cache).to(setup.device)
                leaf["history"] = train(workload, plan, setup.epochs, order_seed=seeds.batch_order,
                                        resume=stored.checkpoint)[t:]
    return {"units": units, "seconds": time.perf_counter() - started, "cpu_seconds": time.process_time() - cpu,
            "trunks": trunks, "leaves": leaves}


def trial_history(seed_table: Mapping[str, Any], config_index: int, *,
                  probes: Probes | None = None) -> list[dict[str, Any]]:
    """What a live trial of configuration ``config_index`` (``Grid.configs`` order) reports, epoch by epoch.

    Without ``probes``, no cooldown metrics (a trial that does not probe). With ``probes`` (a fresh schedule of
    the live trial's probes), the cooldown metrics exactly at the epochs it would probe."""
    leaf = seed_table["leaves"][config_index]
    trunk = seed_table["trunks"][leaf["trunk"]]["history"][:leaf["transition_epoch"]]
    history = [dict(r) for r in trunk] + [dict(r) for r in leaf["history"]]
    for result in history:
        probed = any(key.startswith(COOLDOWN_PREFIX) for key in result)
        due = probes is not None and not result.get("last_epoch") and probes.due(int(result["epoch"]) + 1,
                                                                               bool(result[LARGE_STEP]))
        if probed and not due:
            for key in [k for k in result if k.startswith(COOLDOWN_PREFIX)]:
                del result[key]
        elif due and not probed:
            raise ValueError(f"the table has no probe where the live trial would run one (epoch {result['epoch']})")
    return history


# ---- the table file ---------------------------------------------------------------------------------------------


def load(path: str | Path) -> dict[str, Any]:
    """A table written by ``save``."""
    with gzip.open(path, "rt") as source:
        table = json.load(source)
    if table.get("format") != FORMAT:
        raise ValueError(f"{path}: not a {FORMAT} table")
    return table


def save(path: str | Path, meta: Mapping[str, Any], seeds: Mapping[int, Mapping[str, Any]]) -> None:
    """Written to a temporary file and renamed: a reader never sees half a table."""
    document = {"format": FORMAT, "meta": {**meta, "seeds": sorted(seeds)},
                "seeds": {str(s): seeds[s] for s in sorted(seeds)}}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    with gzip.GzipFile(temporary, "wb", mtime=0) as out:
        out.write(json.dumps(document, separators=(",", ":"), allow_nan=True).encode())
    os.replace(temporary, path)


def commit() -> dict[str, Any]:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    return {"commit": git("rev-parse", "HEAD") or None, "dirty": bool(git("status", "--porcelain"))}


IDENTITY = ("workload", "params", "space", "epochs", "steps_per_epoch", "probe_fraction")  # what a table is of


def rebuild_command(setup: Setup, seeds: Sequence[int], out: str | Path, workers: int) -> str:
    first = ["--first-seed", str(min(seeds))] if min(seeds) else []
    device = ["--device", setup.device] if setup.device != "cpu" else []
    return shlex.join([".venv/bin/python", "bench/tree_table.py", "--workload", setup.workload, "--params",
                       json.dumps(dict(setup.params)), "--space-json", json.dumps(asdict(setup.grid)), "--epochs",
                       str(setup.epochs), "--seeds", str(len(seeds)), *first, "--workers", str(workers), *device,
                       "--out", str(out)])


def build(setup: Setup, seeds: Sequence[int], out: str | Path, workers: int = 1, log: Any = None) -> dict[str, Any]:
    """Tabulate ``seeds`` into ``out``, rewritten after each; the table. Seeds a table of the same identity at
    ``out`` already holds are kept, not rebuilt (a build cut short goes on where it stopped)."""
    started = time.perf_counter()
    meta = {"workload": setup.workload, "params": dict(setup.params), "space": asdict(setup.grid),
            "epochs": setup.epochs, "steps_per_epoch": setup.steps_per_epoch, "probe_fraction": PROBE_FRACTION,
            "device": setup.device, **commit(), "command": rebuild_command(setup, seeds, out, workers),
            "workers": workers,
            "torch": torch.__version__, "optuna": optuna.__version__, "cpus": os.cpu_count(),
            "machine": platform.machine()}
    done: dict[int, dict[str, Any]] = {}
    if Path(out).exists():
        kept = load(out)
        if _identity(kept["meta"]) == _identity(json.loads(json.dumps(meta))):
            done = {int(s): entry for s, entry in kept["seeds"].items()}
            started -= kept["meta"].get("seconds", 0.0)
    seeds = [s for s in seeds if s not in done]

    def finished(seed: int, entry: dict[str, Any]) -> None:
        done[seed] = entry
        meta["seconds"] = time.perf_counter() - started
        meta["seed_seconds"] = {str(s): done[s]["seconds"] for s in sorted(done)}  # wall: the machine's load shows
        meta["seed_cpu_seconds"] = {str(s): done[s].get("cpu_seconds") for s in sorted(done)}
        save(out, meta, done)
        if log is not None:
            print(f"[{meta['seconds']:6.0f} s] seed {seed}: {entry['seconds']:.0f} s, {len(entry['trunks'])} "
                  f"trunks, {len(entry['leaves'])} leaves, units {entry['units']}", file=log, flush=True)

    if workers == 1:
        for seed in seeds:
            finished(seed, tabulate_seed(setup, seed))
    else:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(tabulate_seed, setup, seed): seed for seed in seeds}
            for future in as_completed(futures):
                finished(futures[future], future.result())
    return load(out)


def _identity(meta: Mapping[str, Any]) -> dict[str, Any]:
    return {key: meta.get(key) for key in IDENTITY}


def merge(paths: Sequence[str | Path], out: str | Path) -> dict[str, Any]:
    """One table of the seeds of tables of one identity (builds of disjoint seeds run side by side); the first
    table's meta, the seconds added up."""
    tables = [load(path) for path in paths]
    meta = dict(tables[0]["meta"])
    seeds: dict[int, dict[str, Any]] = {}
    for path, table in zip(paths, tables, strict=True):
        if _identity(table["meta"]) != _identity(meta):
            raise ValueError(f"{path}: a table of another workload, params, space or epochs")
        seeds.update({int(s): entry for s, entry in table["seeds"].items()})
        for key in ("seed_seconds", "seed_cpu_seconds"):
            meta[key] = {**meta.get(key, {}), **table["meta"].get(key, {})}
    meta["seconds"] = sum(table["meta"]["seconds"] for table in tables)
    meta["merged_from"] = [str(path) for path in paths]
    save(out, meta, seeds)
    return load(out)


def make_setup(workload: str, params: Mapping[str, Any], grid: Grid, epochs: int, device: str = "cpu") -> Setup:
    """Checked: the workload exists and every configuration is a valid schedule for it (SpecError/ValueError)."""
    if workload not in workloads():
        raise ValueError(f"unknown workload {workload!r}; installed: {sorted(workloads())}")
    spe = steps_per_epoch(workload, dict(params))
    for config in grid.configs():
        validate_schedule(grid.space(*config), epochs, spe)
    return Setup(workload, dict(params), grid, epochs, spe, device)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", default="ps10")
    parser.add_argument("--params", default="{}", help="the workload's params as JSON")
    space = parser.add_mutually_exclusive_group()
    space.add_argument("--space", help="a grid as a JSON file (Grid's keys; the rest default)")
    space.add_argument("--space-json", help="a grid as JSON text")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--seeds", type=int, default=10, help="how many data seeds, from --first-seed on")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--merge", nargs="+", metavar="TABLE", help="merge these tables into --out, and stop")
    parser.add_argument("--workers", type=int, default=1, help="processes (seeds run in parallel)")
    parser.add_argument("--out", required=True, help="the table, a .json.gz")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where trunks and leaves train")
    args = parser.parse_args(argv)
    if args.merge:
        try:
            table = merge(args.merge, args.out)
        except (OSError, ValueError) as err:
            parser.error(f"--merge: {err}")
        print(f"wrote {args.out}: seeds {table['meta']['seeds']}")
        return
    if args.epochs < 3 or args.seeds < 1 or args.workers < 1 or args.first_seed < 0:
        parser.error("--epochs must be >= 3, --seeds and --workers >= 1, --first-seed >= 0")
    try:
        params = json.loads(args.params)
        raw = json.loads(Path(args.space).read_text()) if args.space else json.loads(args.space_json or "{}")
        setup = make_setup(args.workload, params, Grid.parse(raw, args.epochs), args.epochs, args.device)
        if args.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device cuda: torch sees no CUDA device")
    except (OSError, ValueError, SpecError) as err:
        parser.error(f"--workload / --params / --space: {err}")
    print("command:", shlex.join([sys.executable, *sys.argv]), flush=True)
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    table = build(setup, seeds, args.out, args.workers, log=sys.stdout)
    size = Path(args.out).stat().st_size
    print(f"wrote {args.out}: {len(table['seeds'])} seeds, {len(setup.grid.configs())} configurations each, "
          f"{size / 1e6:.2f} MB, {table['meta']['seconds']:.0f} s", flush=True)


if __name__ == "__main__":
    main()
