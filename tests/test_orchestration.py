"""What makes orchestration cheap, checked by what it does (never by timings): a warm worker reuses what the seed
policy shares, an epoch's write does not grow with the epoch number, the driver's bookkeeping reads no trial, the
API's reads are a constant number of queries and its trial list is paginated, and the cluster caps concurrency."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import optuna
import pytest
import torch
from fastapi.testclient import TestClient
from sqlalchemy import event

from phasetune.search_spaces import build_plan
from phasetune.service.db import migrate
from phasetune.service.main import create_app
from phasetune.service.settings import Settings
from phasetune.workers import epoch_log, optuna_study
from phasetune.workers.searcher import OptunaStudySearcher
from phasetune.workers.seeding import SeedPolicy, SeedScope, trial_seeds
from phasetune.workers.spec import Resources
from phasetune.workers.train import train
from phasetune.workers.tune_run import trial_slots
from phasetune.workers.workloads import build_workload
from phasetune.workers.workloads.cache import WorkloadCache
from tests.factories import QUADRATIC_SPEC, handle_for, small_spec

CONSTANT = {"family": "constant", "lr": 0.1, "momentum": 0.9}


def _weights(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.state_dict().values()]


# ---- warm workers ----------------------------------------------------------------------------------------------


def test_a_warm_worker_builds_the_shared_data_and_model_once_and_trains_like_a_fresh_one():
    cache, shared = WorkloadCache(), SeedPolicy()
    first = build_workload("digits", {}, trial_seeds(3, shared, 0), cache=cache)
    initial = _weights(first.model)
    plan = build_plan(CONSTANT, 2, first.steps_per_epoch)
    first_curve = train(first, plan, 2, order_seed=trial_seeds(3, shared, 0).batch_order)

    second = build_workload("digits", {}, trial_seeds(3, shared, 1), cache=cache)
    assert first.reused == {"data": False, "model": False} and second.reused == {"data": True, "model": True}
    assert cache.builds == {"data": 1, "model": 1}
    # The second trial starts from the initial weights, not from what the first trained them to ...
    assert all(torch.equal(a, b) for a, b in zip(_weights(second.model), initial))
    assert second.model is not first.model
    # ... and learns the very same curve as a trial in a fresh process.
    second_curve = train(second, plan, 2, order_seed=trial_seeds(3, shared, 1).batch_order)
    fresh = build_workload("digits", {}, trial_seeds(3, shared, 1))
    fresh_curve = train(fresh, plan, 2, order_seed=trial_seeds(3, shared, 1).batch_order)
    for ours, theirs in zip(second_curve, fresh_curve):
        assert ours["train_loss"] == theirs["train_loss"] and ours["val_loss"] == theirs["val_loss"]
    assert first_curve[-1]["train_loss"] == second_curve[-1]["train_loss"]  # one schedule, one curve


def test_per_trial_init_seeds_rebuild_the_model_but_share_the_data():
    cache, policy = WorkloadCache(), SeedPolicy(init=SeedScope.TRIAL)
    a = build_workload("quadratic", {}, trial_seeds(0, policy, 0), cache=cache)
    b = build_workload("quadratic", {}, trial_seeds(0, policy, 1), cache=cache)
    assert b.reused == {"data": True, "model": False} and cache.builds == {"data": 1, "model": 2}
    assert not all(torch.equal(x, y) for x, y in zip(_weights(a.model), _weights(b.model)))
    other_params = build_workload("quadratic", {"dim": 8}, trial_seeds(0, policy, 0), cache=cache)
    assert other_params.reused == {"data": False, "model": False}


# ---- the driver's writes and reads -----------------------------------------------------------------------------


@contextlib.contextmanager
def _statements(storage: optuna.storages.RDBStorage) -> Iterator[list[tuple[str, int]]]:
    """Every SQL statement the storage runs meanwhile, with the size of its parameters."""
    seen: list[tuple[str, int]] = []

    def record(conn, cursor, statement, parameters, context, executemany):
        seen.append((statement, len(repr(parameters))))

    event.listen(storage.engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(storage.engine, "before_cursor_execute", record)


SEARCHER_SPEC = {**QUADRATIC_SPEC, "name": "orchestration", "epochs": 60, "n_trials": 100}


def _searcher(storage_url: str, name: str = "orchestration") -> OptunaStudySearcher:
    migrate(storage_url)
    return OptunaStudySearcher(handle_for(storage_url, name, epochs=60, n_trials=100))


def _epoch(epoch: int, done: bool = False) -> dict:
    return {"epoch": epoch, "val_loss": 1.0 / (epoch + 1), "train_loss": 1.0, "lr": 0.1, "momentum": 0.9,
            "phase": 0, "seconds": 0.01, "last_epoch": done}


def test_an_epochs_write_does_not_grow_with_the_epoch_number(storage_url, monkeypatch):
    monkeypatch.setattr(epoch_log, "EPOCHS_PER_CHUNK", 5)
    monkeypatch.setattr(epoch_log, "FLUSH_S", 0.0)  # write every epoch: the worst case
    searcher = _searcher(storage_url)
    searcher.suggest("t0")
    written = []
    for epoch in range(60):
        with _statements(searcher._handle.storage) as seen:
            searcher.on_trial_result("t0", _epoch(epoch))
        written.append(sum(size for statement, size in seen if not statement.lstrip().upper().startswith("SELECT")))
    # The same place in a chunk costs the same at epoch 7 as at epoch 57, up to the digits of the numbers in it;
    # nothing costs more than a full chunk (rewriting the history would make epoch 57 cost 8x epoch 7).
    assert written[57] <= 1.2 * written[7] and written[58] <= 1.2 * written[8]
    assert max(written[1:]) <= 1.2 * max(written[1:10])
    searcher.on_trial_complete("t0", _epoch(59, done=True))
    (trial,) = searcher._study.trials
    assert [m["epoch"] for m in epoch_log.history(trial.user_attrs)] == list(range(60))
    assert sum(key.startswith(epoch_log.PREFIX) for key in trial.user_attrs) == 12


def test_throttled_epochs_are_all_written_by_the_trials_end(storage_url):
    searcher = _searcher(storage_url)  # FLUSH_S as shipped: the epochs below come faster than one a second
    searcher.suggest("t0")
    for epoch in range(5):
        searcher.on_trial_result("t0", _epoch(epoch))
    searcher.on_trial_complete("t0", _epoch(5, done=True))
    (trial,) = searcher._study.trials
    assert [m["epoch"] for m in epoch_log.history(trial.user_attrs)] == list(range(6))
    assert trial.user_attrs["realized_lr"] == [0.1] * 6 and sorted(trial.intermediate_values) == list(range(6))


def test_the_driver_reads_no_trial_to_know_what_remains(storage_url):
    searcher = _searcher(storage_url)
    costs = []
    for n in range(12):
        with _statements(searcher._handle.storage) as seen:
            searcher.suggest(f"t{n}")
        costs.append(len(seen))
        searcher.on_trial_complete(f"t{n}", _epoch(0, done=True))
        with _statements(searcher._handle.storage) as seen:
            assert searcher.remaining() == 100 - n - 1
        assert seen == []
    assert costs[11] == costs[2]  # a suggest costs the same with 2 finished trials as with 11


# ---- the API's reads -------------------------------------------------------------------------------------------


@pytest.fixture
def api(storage_url, tmp_path) -> Iterator[tuple[TestClient, optuna.storages.RDBStorage]]:
    settings = Settings(storage_url=storage_url, start_dashboard=False, results_dir=str(tmp_path / "results"),
                        artifacts_dir=str(tmp_path / "artifacts"), data_root=str(tmp_path))
    with TestClient(create_app(settings, run_studies=False)) as client:
        yield client, client.app.state.storage


def _finish_trials(storage_url: str, name: str, n: int, epochs: int = 3) -> None:
    study = optuna.load_study(study_name=name, storage=storage_url)
    for i in range(n):
        trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
        trial.set_user_attr(epoch_log.chunk_key(0), [{"epoch": e, "val_accuracy": i / n} for e in range(epochs)])
        trial.set_user_attr("realized_lr", [0.1] * epochs)
        study.tell(trial, i / n)


def test_reading_a_study_costs_the_same_with_few_or_many_trials(api, storage_url):
    client, storage = api
    study_id = client.post("/studies", json=small_spec("reads")).json()["id"]
    costs = {}
    for total in (3, 40):
        _finish_trials(storage_url, "reads", total - (3 if total == 40 else 0))
        with _statements(storage) as seen:
            study = client.get(f"/studies/{study_id}").json()
        costs[total] = len(seen)
        assert study["n_trials"] == total and study["trial_counts"] == {"COMPLETE": total}
        assert study["best_trial"]["number"] == total - 1 and study["best_trial"]["metrics"] is None
        with _statements(storage) as seen:
            (listed,) = client.get("/studies").json()
        assert listed["n_trials"] == total and listed["best_trial"] is None
        assert not any("FROM trial_user_attributes" in s or "FROM trial_params" in s for s, _ in seen)
    assert costs[40] == costs[3]


def test_trials_come_in_pages_with_or_without_their_history(api, storage_url):
    client, _ = api
    study_id = client.post("/studies", json=small_spec("pages")).json()["id"]
    _finish_trials(storage_url, "pages", 7)
    first = client.get(f"/studies/{study_id}/trials", params={"limit": 3})
    assert first.status_code == 200 and first.headers["X-Total-Count"] == "7"
    assert [t["number"] for t in first.json()] == [0, 1, 2]
    assert [m["epoch"] for m in first.json()[0]["metrics"]] == [0, 1, 2]
    assert first.json()[0]["user_attrs"]["realized_lr"] == [0.1] * 3
    assert "offset=3" in first.headers["Link"] and 'rel="next"' in first.headers["Link"]
    last = client.get(f"/studies/{study_id}/trials", params={"offset": 6, "limit": 3, "history": False})
    assert [t["number"] for t in last.json()] == [6] and "Link" not in last.headers
    assert last.json()[0]["metrics"] is None and "realized_lr" not in last.json()[0]["user_attrs"]
    assert client.get(f"/studies/{study_id}/trials", params={"offset": 50}).json() == []
    assert len(client.get(f"/studies/{study_id}/trials").json()) == 7  # the default page holds a small study
    for bad in ({"limit": 0}, {"limit": 10_001}, {"offset": -1}, {"history": "maybe"}):
        response = client.get(f"/studies/{study_id}/trials", params=bad)
        assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["query", next(iter(bad))]


# ---- concurrency capped by the cluster ------------------------------------------------------------------------


def test_trial_slots_count_what_each_alive_node_can_run():
    nodes = [{"Alive": True, "Resources": {"CPU": 2.0}}, {"Alive": True, "Resources": {"CPU": 3.0, "GPU": 1.0}},
             {"Alive": False, "Resources": {"CPU": 64.0}}]
    assert trial_slots(Resources(cpu=1), nodes) == 5
    assert trial_slots(Resources(cpu=2), nodes) == 2  # a trial runs on one node: 1 CPU left on each is no slot
    assert trial_slots(Resources(cpu=1, gpu=1), nodes) == 1
    assert trial_slots(Resources(cpu=4), nodes) == 0
    assert trial_slots(Resources(cpu=0.5), nodes) == 10


def test_counting_trials_by_state_is_one_query(storage_url):
    searcher = _searcher(storage_url, "counts")
    for n in range(3):
        searcher.suggest(f"t{n}")
    searcher.on_trial_complete("t0", _epoch(0, done=True))
    with _statements(searcher._handle.storage) as seen:
        counts = optuna_study.count_trials(searcher._handle.storage, searcher._handle.study_id)
    assert len(seen) == 1
    assert counts == {optuna.trial.TrialState.COMPLETE: 1, optuna.trial.TrialState.RUNNING: 2}


# ---- what review found: retries, stops, stored specs ---------------------------------------------------------


def test_a_retry_empties_the_chunks_its_earlier_run_wrote_beyond_its_own(monkeypatch):
    monkeypatch.setattr(epoch_log, "EPOCHS_PER_CHUNK", 2)
    monkeypatch.setattr(epoch_log, "FLUSH_S", 0.0)
    stored: dict = {}
    log = epoch_log.EpochLog()
    for epoch in range(6):  # the first run reaches chunk 2 ...
        log.add({"epoch": epoch, "run": 1})
        stored.update(log.due())
    for epoch in range(2):  # ... the retry ends exactly at a chunk's end: chunk 1 (run 1's) would continue it
        log.add({"epoch": epoch, "run": 2})
        stored.update(log.due())
    assert [(r["epoch"], r["run"]) for r in epoch_log.history(stored)] == [(0, 2), (1, 2)]
    assert log.realised() == {"realized_lr": [None, None], "realized_momentum": [None, None]}


def test_a_trial_whose_last_epoch_came_before_the_stop_is_complete_and_a_cut_one_keeps_its_lr(storage_url):
    searcher = _searcher(storage_url, "stopped")
    searcher.suggest("t0")
    searcher.suggest("t1")
    searcher.on_trial_result("t0", _epoch(0))
    searcher.on_trial_result("t0", _epoch(1, done=True))  # trained to the end; Tune had not completed it yet
    searcher.on_trial_result("t1", _epoch(0))
    searcher._handle.time_is_up.set()
    searcher.close_open_trials()
    searcher.close()
    done, cut = searcher._study.trials
    assert done.state.name == "COMPLETE" and done.value == pytest.approx(0.5)
    assert cut.state.name == "PRUNED" and cut.user_attrs["fail_reason"].startswith("study_time_limit_s")
    assert cut.user_attrs["realized_lr"] == [0.1] and done.user_attrs["realized_lr"] == [0.1, 0.1]


def test_a_stored_study_over_a_newer_limit_still_parses():
    from phasetune.workers.spec import MAX_EPOCH_TRIALS, StudySpec

    spec = StudySpec.parse({**SEARCHER_SPEC, "epochs": 1000, "n_trials": MAX_EPOCH_TRIALS})
    with pytest.raises(Exception, match="epochs × n_trials"):
        spec.check_limits()
