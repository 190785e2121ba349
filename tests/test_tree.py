"""The schedule tree as a search strategy (issue 23, step 3), driven in this process on a real storage (SQLite and
PostgreSQL) through the searcher and the trainable's own code: prefixes on a grid, trunks trained once and shared
through the checkpoint store, prefix and leaf decisions with their reasons, a driver that dies mid-study and a new
one that decides from the same state. Over REST with Ray and two workers: tests/test_api.py."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import optuna
import pytest

from phasetune.search_spaces import SpecError
from phasetune.service.db import migrate
from phasetune.workers import epoch_log, study_attrs
from phasetune.workers.handle import StudyHandle
from phasetune.workers.optuna_study import sweep_stale_trials
from phasetune.workers.searcher import OptunaStudySearcher
from phasetune.workers.spec import StudySpec
from phasetune.workers.study_attrs import COOLDOWN_ATTR
from phasetune.workers.trainable import train_trial
from phasetune.workers.tree import GriddedTrial, Strategy, StrategyName, TreeOptions, grid_values
from tests.factories import TREE_EPOCHS, drive, small_spec, tree_spec

EPOCHS, N_TRIALS = TREE_EPOCHS, 20


def test_strategy_options_are_checked_and_round_trip():
    spec = StudySpec.parse(small_spec("t", strategy={"name": "tree", "grid": 4}))
    assert spec.strategy == Strategy(StrategyName.TREE, TreeOptions(grid=4))
    assert StudySpec.parse(spec.to_dict()) == spec
    assert StudySpec.parse(small_spec("p")).strategy == Strategy()
    for raw, field in [({"name": "tree", "grid": 1}, "grid"), ({"name": "tree", "grid": 2.5}, "grid"),
                       ({"name": "tree", "gate_threshold": 2}, "gate_threshold"),
                       ({"name": "tree", "min_peers": 0}, "min_peers"), ({"name": "tree", "depth": 3}, "depth"),
                       ({"name": "plain", "grid": 3}, "grid"), ({"name": "forest"}, "name")]:
        with pytest.raises(SpecError) as err:
            StudySpec.parse(small_spec("t", strategy=raw))
        assert err.value.loc == ("strategy", field), (raw, err.value)


def test_the_tree_needs_a_phases_space_its_own_stopping_and_shared_seeds():
    tree = {"name": "tree"}
    cases = [
        ({"schedule": {"family": "constant", "lr": 0.1}}, ("strategy", "name")),
        ({"schedule": {"family": "phases", "phases": [{"lr": 0.1}], "transition_epochs": []}},
         ("schedule", "phases")),
        ({"schedule": {"family": "phases", "phases": [{"lr": 0.1}, {"lr": 0.01}],
                       "transition_epochs": [{"low": 1.2, "high": 1.8}]}}, ("schedule", "transition_epochs", 0)),
        ({"early_stopping": {"policy": "asha"}}, ("early_stopping", "policy")),
        ({"seed_policy": {"batch_order": "trial"}}, ("seed_policy", "batch_order")),
    ]
    for overrides, loc in cases:
        with pytest.raises(SpecError) as err:
            StudySpec.parse(small_spec("t", strategy=tree, **overrides))
        assert err.value.loc == loc, (overrides, err.value)


def test_shared_settings_are_searched_on_a_grid_and_the_last_phase_as_the_space_says():
    assert grid_values(0.1, 1.0, True, 3) == [0.1, 0.316228, 1.0]
    assert grid_values(0.0, 1.0, False, 5) == [0.0, 0.25, 0.5, 0.75, 1.0]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(30):
        trial = GriddedTrial(study.ask(), phases=2, resolution=3)
        lr0 = trial.suggest_float("phase0.lr", 0.1, 1.0, log=True)
        lr1 = trial.suggest_float("phase1.lr", 0.001, 0.01, log=True)
        boundary = trial.suggest_float("transition_epoch0", 1.5, 4.0)
        assert lr0 in (0.1, 0.316228, 1.0) and isinstance(boundary, int) and 2 <= boundary <= 4
        seen.add(lr1)
    assert len(seen) == 30  # the last phase's settings stay continuous


def _study(storage_url: str, name: str) -> StudyHandle:
    migrate(storage_url)
    spec = StudySpec.parse(tree_spec(name, N_TRIALS))
    study = optuna.create_study(study_name=name, storage=storage_url, direction="maximize")
    study.set_user_attr(study_attrs.SPEC, spec.to_dict())
    return StudyHandle(storage_url, name)


def test_a_tree_study_shares_trunks_stops_prefixes_and_leaves_and_a_new_driver_decides_alike(storage_url, tmp_path):
    """Trunks are trained once and shared (a leaf resumes from its trunk's checkpoint, its curve whole, the reused
    epochs marked, and ends as the same schedule from scratch); each prefix is probed once; prefixes below their
    peers stop the leaves that need them (untrained when the probe came first), leaves below theirs stop at their
    rungs, each with its reason; a driver that dies mid-trial is followed by one that reloads the tree's state."""
    name = "tree"
    handle = _study(storage_url, name)
    store = str(tmp_path / "store")
    first = OptunaStudySearcher(handle, checkpoint_root=store)
    drive(first, max_trials=9, abandon_after=2)  # the 9th trial left RUNNING: the driver died
    state_then = handle.study.user_attrs[study_attrs.TREE_STATE]
    sweep_stale_trials(handle.study)
    second = OptunaStudySearcher(StudyHandle(storage_url, name), checkpoint_root=store)
    assert second._tree.state() == state_then  # the new driver decides from what the first recorded
    drive(second)
    second.close()

    study = optuna.load_study(study_name=name, storage=storage_url)
    trials = study.trials
    counted = [t for t in trials if not t.user_attrs.get(study_attrs.SWEPT)]
    assert len(counted) == N_TRIALS and len(trials) == N_TRIALS + 1  # the abandoned one swept, not counted
    assert {t.state.name for t in counted} <= {"COMPLETE", "PRUNED"}
    summary = study.user_attrs[study_attrs.TREE]
    assert max(len(leaves) for leaves in summary["trunks"].values()) >= 3, summary["trunks"]
    assert summary["stops"].get("prefix", 0) >= 1 and summary["stops"].get("leaf", 0) >= 1, summary["stops"]

    stopped = [t for t in counted if t.state.name == "PRUNED"]
    for trial in stopped:
        last = trial.user_attrs["tree"]["decisions"][-1]
        assert last["stop"] and trial.user_attrs["fail_reason"] == last["reason"], trial.user_attrs
    assert any(t.user_attrs["tree"]["decisions"][-1]["rung"].startswith("prefix") and
               not epoch_log.history(t.user_attrs) for t in stopped), "no leaf was stopped before it trained"
    assert any(t.user_attrs["tree"]["decisions"][-1]["rung"].startswith("leaf") for t in stopped)

    # Each prefix probed once, by the leaf that trained it first: every probe a trial paid for is in the state.
    probes_paid = sum(t.user_attrs.get(COOLDOWN_ATTR, {}).get("probes", 0) for t in trials)
    probed = sum(len(at) for at in study.user_attrs[study_attrs.TREE_STATE]["probes"].values())
    assert probes_paid >= probed > 0 and probes_paid <= probed + 1  # the abandoned trial may have paid one

    resumed = [t for t in counted if t.state.name == "COMPLETE" and (t.user_attrs.get("branch") or {}).get("parent")
               is not None]
    assert resumed, "no leaf resumed from its trunk's checkpoint"
    leaf = resumed[0]
    reused = leaf.user_attrs["branch"]["reused_epochs"]
    curve = epoch_log.history(leaf.user_attrs)
    assert [m["epoch"] for m in curve] == list(range(EPOCHS)) and sorted(leaf.intermediate_values) == list(
        range(EPOCHS))
    assert [bool(m.get("reused")) for m in curve] == [True] * reused + [False] * (EPOCHS - reused)
    # Bit-identical to the same schedule trained from scratch (CPU).
    config = StudySpec.parse(tree_spec(name, N_TRIALS)).trial_config(leaf.number, leaf.user_attrs["schedule"])
    scratch: list[dict] = []
    train_trial(config, "cpu", {}, scratch.append)
    assert [m["val_loss"] for m in scratch] == [m["val_loss"] for m in curve]
    assert math.isclose(scratch[-1]["val_accuracy"], leaf.value, rel_tol=0, abs_tol=0)

    # Whole curves for everything that trained; the leaves stopped at admission have none.
    for trial in counted:
        history = epoch_log.history(trial.user_attrs)
        if trial.state.name == "COMPLETE":
            assert len(history) == EPOCHS
        assert [m["epoch"] for m in history] == list(range(len(history)))
    assert len({t.user_attrs["tree"]["trunk"] for t in trials}) <= 3  # a grid of 3: at most 3 trunks
    assert all(a == b or a[0] != b[0] for a, b in itertools.combinations(
        [(t.params["phase0.lr"], t.user_attrs["tree"]["trunk"]) for t in trials], 2))


def test_the_example_tree_study_is_the_documented_one_and_parses():
    root = Path(__file__).resolve().parents[1]
    example = (root / "examples" / "tree_ps10.json").read_text()
    assert f"```json\n{example}```" in (root / "docs" / "search.md").read_text()
    spec = StudySpec.parse(json.loads(example))
    assert spec.strategy.name is StrategyName.TREE and spec.strategy.tree == TreeOptions()
