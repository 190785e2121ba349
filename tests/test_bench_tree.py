"""The tabulated schedule tree (bench/tree_table.py) and its simulation and pre-checks (bench/tree_sim.py), on a
tiny table built through the real training loop, checkpoint store and resume (issue 23, step 1)."""

from __future__ import annotations

import gzip
import itertools
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from phasetune.search_spaces import build_plan
from phasetune.workers.seeding import Seeds
from phasetune.workers.study_attrs import COOLDOWN_PREFIX
from phasetune.workers.train import train
from phasetune.workers.tree import FixedProbes
from phasetune.workers.workloads import build_workload

BENCH = Path(__file__).resolve().parents[1] / "bench"
if str(BENCH) not in sys.path:
    sys.path.append(str(BENCH))  # appended: a bench script's name never shadows an installed module

import tree_sim  # noqa: E402
import tree_table  # noqa: E402

EPOCHS = 6
GRID = {"phase1_lr": [0.2, 0.6], "transitions": [2, 4], "phase2_effective_lr": [0.01], "phase2_momentum": [0.9]}
SEEDS = 2


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    path = tmp_path_factory.mktemp("tree") / "digits.json.gz"
    setup = tree_table.make_setup("digits", {}, tree_table.Grid.parse(GRID, EPOCHS), EPOCHS)
    return path, tree_table.build(setup, range(SEEDS), path)


def probes(transition: int) -> FixedProbes:
    """What a live tree leaf that trains its whole prefix probes: its prefix after every epoch up to its decay."""
    return FixedProbes(range(1, transition + 1), tree_table.PROBE_FRACTION)


def strip(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if not k.endswith("seconds")}


def test_a_table_leaf_is_what_the_same_schedule_reports_from_scratch(table):
    path, document = table
    meta = document["meta"]
    grid = tree_table.Grid.parse(meta["space"], EPOCHS)
    assert meta["seeds"] == [0, 1] and meta["workload"] == "digits" and meta["seconds"] > 0
    assert "tree_table.py" in meta["command"] and len(meta["commit"] or "") == 40
    for seed in range(SEEDS):
        entry = document["seeds"][str(seed)]
        assert len(entry["trunks"]) == 2 and len(entry["leaves"]) == len(grid.configs()) == 4
        for trunk in entry["trunks"]:  # a probe after every epoch of the trunk, up to the last transition
            assert len(trunk["history"]) == 4 and all(COOLDOWN_PREFIX + "val_accuracy" in r for r in trunk["history"])
        for c, config in enumerate(grid.configs()):
            workload = build_workload("digits", {}, Seeds.shared(seed))
            plan = build_plan(grid.schedule(*config, EPOCHS, entry["units"]), EPOCHS, workload.steps_per_epoch)
            transition = grid.transitions[config[1]]
            live = train(workload, plan, EPOCHS, order_seed=seed, probes=probes(transition))
            assert [strip(r) for r in tree_table.trial_history(entry, c, probes=probes(transition))] == \
                [strip(r) for r in live]  # bit-identical, the live probes included
            plain = tree_table.trial_history(entry, c)
            assert not any(k.startswith(COOLDOWN_PREFIX) for r in plain for k in r)
    with gzip.open(path, "rt") as source:
        assert json.load(source)["format"] == tree_table.FORMAT


def test_the_bench_prints_prechecks_first_and_writes_the_issues_json(table, tmp_path, capsys):
    path, _ = table
    out = tmp_path / "sim.json"
    document = tree_sim.main(["--workload", "digits", "--epochs", str(EPOCHS), "--seeds", str(SEEDS),
                              "--sampler-seeds", "2", "--trials", "3", "--table", str(path), "--json", str(out)])
    printed = capsys.readouterr().out
    assert printed.index("pre-checks") < printed.index("summary over")
    written = json.loads(out.read_text())
    assert set(written["prechecks"]) == {"P1", "P2", "P3", "P4"}
    assert all(isinstance(p["ok"], bool) for p in written["prechecks"].values())
    assert set(written["summary"]) == set(tree_sim.METHODS)
    for row in written["summary"].values():
        assert {"speedup_vs_full", "speedup_vs_naive", "final_regret", "reach", "p_stop_top5",
                "probe_share"} <= set(row)
    # 4 configurations: the top 5% is one per seed, met in ~2.5 random trials: no headroom, so no speed-ups.
    assert not written["prechecks"]["P2"]["ok"] and "no speed-ups: pre-check" in printed
    assert all(row["speedup_vs_full"] is None for row in written["summary"].values())
    assert written["summary"]["full"]["probe_share"] == 0
    assert document["summary"]["full"]["p_stop_top5"] == 0.0
    # The tree ran on the tiny table: its row, its probes (once per trunk and candidate), its goals line.
    assert 0 < written["summary"]["tree"]["probe_share"] < 1 and written["summary"]["tree"]["trials_per_run"] > 0
    assert printed.index("goals (issue 23)") > printed.index("summary over")
    assert [g["met"] for g in written["tree"]["goals"][:2]] == [None, None]  # P2 failed: ruled out


def test_the_bench_runs_the_services_tpe_told_each_outcome(table, capsys):
    path, _ = table
    args = ["--workload", "digits", "--epochs", str(EPOCHS), "--seeds", str(SEEDS), "--sampler-seeds", "2",
            "--trials", "3", "--table", str(path), "--sampler", "tpe"]
    document = tree_sim.main([*args, "--methods", "full,asha,tree"])
    assert "the service's TPE" in capsys.readouterr().out and document["settings"]["sampler"] == "tpe"
    assert set(document["summary"]) == {"full", "asha", "tree"}
    with pytest.raises(SystemExit):  # top1epoch reads configurations ahead of any result: random search only
        tree_sim.main([*args, "--methods", "full,top1epoch"])
    # The stream learns: told that one configuration is the only good one, TPE comes back to it more often.
    stream = tree_sim.TPEStream((2, 2, 1), 0, 0)
    drawn = []
    for _ in range(40):
        drawn.append(next(stream))
        stream.tell(1.0 if drawn[-1] == 3 else None)
    assert drawn[20:].count(3) > drawn[:10].count(3) + 2, drawn


def synthetic(finals: list[float], late: int | None = None) -> tree_sim.SeedGrid:
    """A seed whose configuration i rises linearly to finals[i]; ``late`` stays at 0.1 until its last epoch."""
    histories = []
    for i, final in enumerate(finals):
        curve = [0.1] * (EPOCHS - 1) + [final] if i == late else [final * (e + 1) / EPOCHS for e in range(EPOCHS)]
        histories.append([{"epoch": e, "train_loss": 1.0, "val_accuracy": v, "last_epoch": e == EPOCHS - 1,
                           "large_step_phase": False} for e, v in enumerate(curve)])
    grid = np.array(finals)
    ordered = np.sort(grid)[::-1]
    return tree_sim.SeedGrid(0, histories, grid, np.zeros(len(finals), bool),
                             float(ordered[max(1, math.ceil(0.05 * len(finals))) - 1]), float(ordered[0]),
                             float(np.median(grid)))


def test_asha_stops_a_late_blooming_best_and_full_does_not():
    finals = [0.5 + 0.01 * i for i in range(20)]  # configuration 19 is the best (the top 5% of 20)
    grid = synthetic(finals, late=19)
    sim = tree_sim.Sim(EPOCHS, 40, "val_accuracy", 1.0, 10)
    asha = tree_sim.simulate("asha", grid, 0, sim)
    full = tree_sim.simulate("full", grid, 0, sim)
    assert asha.seen_top >= 1 and tree_sim.p_stop_top5([asha]) > 0.5
    assert tree_sim.p_stop_top5([full]) == 0.0 and full.completed == 40 and full.spent == sim.budget
    assert grid.regret(full.best) == 0.0
    assert asha.trials > full.trials  # it stopped trials, so the budget ran more of them


def test_speedup_reads_the_median_curves_at_fulls_final_regret():
    budget = 100
    full = np.tile(np.where(np.arange(budget) < 79, 1.0, 0.2), (4, 1))  # reaches 0.2 after 80 epochs
    fast = np.tile(np.where(np.arange(budget) < 19, 1.0, 0.1), (4, 1))  # after 20
    never = np.full((4, budget), math.inf)
    figures = tree_sim.speedups({"full": full, "fast": fast, "never": never}, naive="fast")
    assert figures["fast"]["vs_full"] == 4.0 and figures["never"]["vs_full"] == 0.0
    assert figures["full"]["vs_naive"] == 0.25 and figures["never"]["vs_naive"] == 0.0


def test_the_target_is_the_seeds_own_top_five_percent():
    grid = synthetic([float(i) for i in range(40)])
    assert grid.target == 38.0 and grid.top.sum() == 2  # ceil(5% of 40) = the 2nd best
    assert grid.regret(39.0) == 0.0 and grid.regret(grid.median) == 1.0 and math.isinf(grid.regret(-math.inf))
    p2 = tree_sim.precheck_p2([grid], [], EPOCHS)
    assert p2["expected_full_trials"] == pytest.approx(41 / 3) and not p2["ok"]


def test_a_build_keeps_the_seeds_its_table_holds_and_tables_of_disjoint_seeds_merge(table, tmp_path):
    path, document = table
    setup = tree_table.make_setup("digits", {}, tree_table.Grid.parse(GRID, EPOCHS), EPOCHS)
    again = tree_table.build(setup, range(SEEDS), path)  # nothing left to train: the table as it was
    assert again["seeds"] == document["seeds"]
    halves = []
    for seed in range(SEEDS):
        half = tmp_path / f"seed{seed}.json.gz"
        tree_table.save(half, {**document["meta"], "seconds": 1.0}, {seed: document["seeds"][str(seed)]})
        halves.append(half)
    merged = tree_table.merge(halves, tmp_path / "merged.json.gz")
    assert merged["meta"]["seeds"] == [0, 1] and merged["seeds"] == document["seeds"]
    assert merged["meta"]["seconds"] == 2.0
    other = tmp_path / "other.json.gz"
    tree_table.save(other, {**document["meta"], "epochs": EPOCHS + 1}, {})
    with pytest.raises(ValueError, match="another workload"):
        tree_table.merge([halves[0], other], tmp_path / "bad.json.gz")


# ---- the tree (issue 23, step 2) --------------------------------------------------------------------------------

from phasetune.workers import tree as workers_tree  # noqa: E402

TRANSITIONS = (2, 4)


def tree_seed(trunk_raw: list[float], probes: list[float], finals: dict[tuple[int, int, int], float],
              diverged_trunk: int | None = None) -> tree_sim.SeedGrid:
    """A synthetic table seed in tree_table's layout: trunk i reports ``trunk_raw[i]`` (+0.01 an epoch) and probes
    ``probes[i]`` at every epoch; leaf (i, t, p) climbs to ``finals[i, t, p]`` after its decay at t (so a leaf's
    rank at a depth is its final's rank). ``diverged_trunk`` ends with a NaN loss after its first epoch."""

    def result(epoch: int, value: float, last: bool = False, loss: float = 1.0) -> dict[str, Any]:
        return {"epoch": epoch, "train_loss": loss, "val_accuracy": value, "last_epoch": last,
                "large_step_phase": False, COOLDOWN_PREFIX + "val_accuracy": value, COOLDOWN_PREFIX + "steps": 5}

    trunks = []
    for i, raw in enumerate(trunk_raw):
        history = [{**result(e, raw + 0.01 * e), COOLDOWN_PREFIX + "val_accuracy": probes[i]}
                   for e in range(TRANSITIONS[-1])]
        if i == diverged_trunk:
            history = [history[0], result(1, 0.1, last=True, loss=math.nan)]
        trunks.append({"history": history})
    leaves = []
    for (i, k, p), final in sorted(finals.items()):
        t = TRANSITIONS[k]
        ended = i == diverged_trunk
        leaves.append({"trunk": i, "transition": k, "transition_epoch": t, "phase2": p, "history": [] if ended else
                       [result(e, final - 0.01 * (EPOCHS - 1 - e), last=e == EPOCHS - 1) for e in range(t, EPOCHS)]})
    table = {"meta": {"epochs": EPOCHS}, "seeds": {"0": {"trunks": trunks, "leaves": leaves}}}
    return tree_sim.seed_grid(table, 0, "val_accuracy", 1.0)


def late_decay_seed() -> tree_sim.SeedGrid:
    """Six trunks; trunk 5 (the large LR) is the worst on raw values before its decay but the best by its probe,
    and its late-decay leaves (t = 4) end best: the top 5% of the 24 configurations."""
    finals = {}
    for i, k, p in itertools.product(range(6), range(2), range(2)):
        late_best = 0.9 + 0.05 * p if k else 0.6 + 0.005 * p
        finals[i, k, p] = late_best if i == 5 else 0.5 + 0.02 * i + 0.01 * k + 0.005 * p
    return tree_seed([0.4 + 0.02 * i for i in range(5)] + [0.2], [0.5 + 0.02 * i for i in range(6)], finals)


def test_the_large_lr_late_decay_best_that_asha_stops_is_kept_by_the_tree():
    grid = late_decay_seed()
    sim = tree_sim.Sim(EPOCHS, 40, "val_accuracy", 1.0, 10)
    asha = [tree_sim.simulate("asha", grid, k, sim) for k in range(5)]
    tree = [tree_sim.simulate("tree", grid, k, sim) for k in range(5)]
    assert tree_sim.p_stop_top5(asha) > 0.5  # ASHA ranks trunk 5's raw values: its best leaves die early
    assert tree_sim.p_stop_top5(tree) == 0.0 and all(run.best == grid.best for run in tree)
    assert all(run.stops.get("prefix", 0) + run.stops.get("leaf", 0) > 0 for run in tree)  # it does stop others
    assert all(sim.budget <= run.spent < sim.budget + 1 for run in tree)  # the last epoch's probe may overrun


def test_a_gate_below_its_threshold_stops_nothing():
    grid = late_decay_seed()
    closed = tree_sim.Sim(EPOCHS, 40, "val_accuracy", 1.0, 10, workers_tree.TreeOptions(gate_threshold=1.01))
    for k in range(3):
        run = tree_sim.simulate("tree", grid, k, closed)
        assert run.stops == {} and run.stopped_top == 0 and run.completed >= run.trials - 1  # the last: maybe cut
    # The rule alone: a rung whose signal disagrees with the completed leaves' finals records, and stops nothing.
    policy = workers_tree.TreePolicy(workers_tree.TreeOptions(), EPOCHS)
    for trunk in range(6):
        policy.record_probe(str(trunk), 2, float(trunk))
    for n in range(12):  # probes anti-correlated with the finals
        policy.complete({2: str(n % 6)}, 2, {}, -float(n % 6))
    held = policy.prefix("0", 2)
    assert held.would_stop and not held.stop and held.gate is not None and held.gate < 0
    assert "recorded only" in held.reason
    agreeing = workers_tree.TreePolicy(workers_tree.TreeOptions(), EPOCHS)
    for trunk in range(6):
        agreeing.record_probe(str(trunk), 2, float(trunk))
    for n in range(12):
        agreeing.complete({2: str(n % 6)}, 2, {}, float(n % 6))
    assert agreeing.prefix("0", 2).stop and not agreeing.prefix("5", 2).stop
    state = json.loads(json.dumps(agreeing.state.to_dict()))  # serializable: a reloaded state decides the same
    again = workers_tree.TreePolicy(workers_tree.TreeOptions(), EPOCHS, workers_tree.TreeState.from_dict(state))
    assert again.prefix("0", 2).stop and again.agreement("prefix:2") == agreeing.agreement("prefix:2")


def test_the_tree_charges_each_prefix_once_and_its_probes_and_stops_a_diverged_trunk_at_once():
    finals = {(i, k, p): 0.5 + 0.01 * i + 0.02 * k + 0.001 * p for i, k, p in itertools.product(range(3), range(2),
                                                                                              range(2))}
    grid = tree_seed([0.4, 0.5, 0.6], [0.4, 0.5, 0.6], finals, diverged_trunk=0)
    closed = workers_tree.TreeOptions(gate_threshold=1.01)  # no gated stop: the ledger alone
    sim = tree_sim.Sim(EPOCHS, 100, "val_accuracy", 1.0, 10, closed)
    run = tree_sim.simulate("tree", grid, 0, sim)
    leaves = grid.entry["leaves"]
    grown, probed, spent, expected = [0, 0, 0], set(), 0.0, []
    for c in itertools.islice(tree_sim.stream(len(leaves), 0, 0), len(leaves)):  # the first pass, by hand
        i, t = leaves[c]["trunk"], leaves[c]["transition_epoch"]
        if i == 0:  # diverged in its second epoch: charged once, then every leaf of it stops for free
            spent += 2 - grown[0]
            grown[0] = 2
            continue
        spent += max(0, t - grown[i]) + 0.5 * len({(i, r) for r in TRANSITIONS if r <= t} - probed) + EPOCHS - t
        probed |= {(i, r) for r in TRANSITIONS if r <= t}
        grown[i] = max(grown[i], t)
        expected.append(spent)
    assert [spent for spent, _ in run.events[:len(expected)]] == pytest.approx(expected)
    assert run.stops["diverged"] >= 4 and set(run.stops) == {"diverged"}
    assert run.probe == pytest.approx(0.5 * 4)  # 2 trunks x 2 candidates, 5 steps of 10 each, once per run


# ---- the simulation is the live tree (issue 23, step 3) ---------------------------------------------------------


def test_the_simulation_takes_the_live_tree_studys_decisions_and_ends_with_its_incumbent(tmp_path, postgres_url):
    """A tree study run through the searcher and the trainable's own code (in this process, one trial after
    another, on PostgreSQL) and ``tree_sim.run_tree`` over a table of the same grid, fed the configurations in the
    order the live study drew them: the same decision at every rung (kind, outcome, signal, bit for bit), the same
    stopped trials, the same incumbent."""
    import optuna

    from phasetune.service.db import migrate
    from phasetune.workers import study_attrs
    from phasetune.workers.handle import StudyHandle
    from phasetune.workers.searcher import OptunaStudySearcher
    from phasetune.workers.spec import StudySpec
    from tests.factories import drive

    epochs, lrs, transitions = 6, [0.1, 0.3, 0.9], [2, 3]
    options = {"grid": 3, "min_peers": 2, "reduction_factor": 2, "gate_threshold": -1, "gate_min_pairs": 3}
    grid = tree_table.Grid.parse({"phase1_lr": lrs, "transitions": transitions, "phase2_effective_lr": [0.01],
                                  "phase2_momentum": [0.9]}, epochs)
    document = tree_table.build(tree_table.make_setup("digits", {}, grid, epochs), [0], tmp_path / "t.json.gz")
    entry = document["seeds"]["0"]

    point = grid.space(0, 0, 0)  # the table's own space, its shared settings and transition made ranges
    point["phases"][0]["lr"] = {"low": lrs[0], "high": lrs[-1], "log": True, "unit": "lr_crit"}
    point["transition_epochs"] = [{"low": transitions[0], "high": transitions[-1]}]
    spec = {"name": "live-tree", "workload": {"name": "digits", "params": {}}, "epochs": epochs,
            "objective": {"metric": "val_accuracy", "direction": "maximize"}, "schedule": point, "n_trials": 12,
            "sampler": {"name": "random", "seed": 0}, "seed": 0, "strategy": {"name": "tree", **options}}
    migrate(postgres_url)
    study = optuna.create_study(study_name="live-tree", storage=postgres_url, direction="maximize")
    study.set_user_attr(study_attrs.SPEC, StudySpec.parse(spec).to_dict())
    searcher = OptunaStudySearcher(StudyHandle(postgres_url, "live-tree"), units=entry["units"],
                                   checkpoint_root=str(tmp_path / "store"))
    drive(searcher)
    searcher.close()
    trials = optuna.load_study(study_name="live-tree", storage=postgres_url).trials

    order = [grid.configs().index((lrs.index(t.params["phase0.lr"]), transitions.index(t.params["transition_epoch0"]),
                                   0)) for t in trials]
    sim = tree_sim.Sim(epochs, 10**6, "val_accuracy", 1.0, document["meta"]["steps_per_epoch"],
                       workers_tree.TreeOptions(**options))
    run = tree_sim.run_tree(tree_sim.seed_grid(document, 0, "val_accuracy", 1.0), 0, sim, configs=iter(order))

    def decided(decisions: list[dict[str, Any]]) -> list[tuple[str, bool, float | None]]:
        return [(d["rung"], d["stop"], d["signal"]) for d in decisions]

    live = [d for t in trials for d in t.user_attrs["tree"]["decisions"]]
    assert decided(live) == decided(run.decisions) and len(live) > len(trials)
    outcomes = [None if t.state.name == "COMPLETE" else t.user_attrs["tree"]["decisions"][-1]["rung"].split(":")[0]
                for t in trials]
    assert outcomes == run.outcomes and any(outcomes) and not all(outcomes)
    assert max(t.value for t in trials if t.state.name == "COMPLETE") == run.best
