"""The checkpoint store for branching (issue 13): keys name exactly the prefix, a stored checkpoint resumes exactly,
the size cap evicts the least recently used, and a missing or corrupt checkpoint is a miss, never an error."""

from __future__ import annotations

import os
import time

import torch

from phasetune.search_spaces import build_plan
from phasetune.workers.checkpoints import CheckpointStore, prefix_key
from phasetune.workers.seeding import Seeds
from phasetune.workers.train import train
from phasetune.workers.workloads import build_workload
from tests.factories import BRANCHES

SEEDS = Seeds(data=3, init=3, batch_order=7)
EPOCHS = 5


def _plan(schedule: dict, steps_per_epoch: int = 10):
    return build_plan(schedule, EPOCHS, steps_per_epoch)


def test_keys_name_the_prefix_and_nothing_else():
    parent, branch, at = BRANCHES["2-phase"]  # the same first phase up to epoch 2, different after
    key = prefix_key("digits", {}, SEEDS, _plan(parent), at)
    assert key is not None and key == prefix_key("digits", {}, SEEDS, _plan(branch), at)
    assert key != prefix_key("digits", {}, SEEDS, _plan(branch), at + 1)  # past the boundary they differ
    assert key != prefix_key("digits", {}, SEEDS, _plan(parent), at - 1)
    assert key != prefix_key("digits", {"hidden": 32}, SEEDS, _plan(parent), at)
    assert key != prefix_key("digits", {}, Seeds(data=3, init=4, batch_order=7), _plan(parent), at)
    assert key != prefix_key("digits", {}, SEEDS, _plan(parent, steps_per_epoch=11), at)
    other_lr = {**parent, "phases": [{"lr": 0.31, "momentum": 0.0}, *parent["phases"][1:]]}
    assert key != prefix_key("digits", {}, SEEDS, _plan(other_lr), at)
    other_wd = {**parent, "phases": [{"lr": 0.3, "momentum": 0.0, "weight_decay": 1e-4}, *parent["phases"][1:]]}
    assert key != prefix_key("digits", {}, SEEDS, _plan(other_wd), at)  # same lr, another optimizer setting
    autodecay = {"family": "autodecay", "lr": 0.1}
    assert prefix_key("digits", {}, SEEDS, _plan(autodecay), 1) is None  # its values follow the losses


def test_a_stored_checkpoint_resumes_exactly(tmp_path):
    parent_schedule, branch_schedule, at = BRANCHES["3-phase"]
    store = CheckpointStore(tmp_path / "store", max_bytes=50_000_000)
    parent = build_workload("digits", {}, SEEDS)
    plan = build_plan(parent_schedule, EPOCHS, parent.steps_per_epoch)
    key = prefix_key("digits", {}, SEEDS, plan, at)
    train(parent, plan, EPOCHS, order_seed=SEEDS.batch_order, checkpoint_at={at},
          on_checkpoint=lambda c: store.put(key, c, trial=4))
    assert store.stats()["checkpoints"] == 1 and store.stats()["bytes"] > 0
    branch = build_workload("digits", {}, SEEDS)
    branch_plan = build_plan(branch_schedule, EPOCHS, branch.steps_per_epoch)
    stored = store.get(prefix_key("digits", {}, SEEDS, branch_plan, at))
    assert stored is not None and stored.checkpoint.epoch == at and stored.trial == 4
    train(branch, branch_plan, EPOCHS, order_seed=SEEDS.batch_order, resume=stored.checkpoint)
    scratch = build_workload("digits", {}, SEEDS)
    train(scratch, build_plan(branch_schedule, EPOCHS, scratch.steps_per_epoch), EPOCHS, order_seed=SEEDS.batch_order)
    for mine, theirs in zip(branch.model.state_dict().values(), scratch.model.state_dict().values(), strict=True):
        assert torch.equal(mine, theirs)


def _checkpoint(tmp_path):
    taken = []
    workload = build_workload("digits", {}, SEEDS)
    parent, _, at = BRANCHES["2-phase"]
    train(workload, build_plan(parent, 3, workload.steps_per_epoch), 3, checkpoint_at={at},
          on_checkpoint=taken.append)
    return taken[0]


def test_the_cap_evicts_the_least_recently_used(tmp_path):
    checkpoint = _checkpoint(tmp_path)
    probe = CheckpointStore(tmp_path / "probe", max_bytes=10**9)
    size = probe.put("x", checkpoint)
    store = CheckpointStore(tmp_path / "store", max_bytes=int(2.5 * size))  # room for two
    store.put("a", checkpoint)
    store.put("b", checkpoint)
    past = time.time() - 100
    os.utime(store.root / "a.ckpt", (past, past))
    os.utime(store.root / "b.ckpt", (past + 1, past + 1))
    assert store.get("a") is not None  # a is now the most recently used
    store.put("c", checkpoint)
    assert store.get("b") is None and store.get("a") is not None and store.get("c") is not None
    assert store.stats() == {"checkpoints": 2, "bytes": 2 * size}


def test_a_missing_or_corrupt_checkpoint_is_a_miss(tmp_path):
    store = CheckpointStore(tmp_path / "store", max_bytes=10**9)
    assert store.get("nothing") is None
    store.put("k", _checkpoint(tmp_path))
    path = store.root / "k.ckpt"
    path.write_bytes(path.read_bytes()[:100])  # truncated
    assert store.get("k") is None and not path.exists()  # and the corrupt file is gone
    assert store.stats() == {"checkpoints": 0, "bytes": 0}


def test_a_warmed_up_autodecay_is_loss_driven_and_awaits_its_decay():
    """Warmup passes through what its family is: a warmed-up AutoDecay cannot share a prefix, and it is a
    large-step phase until its first decay (early stopping does not judge it there), as a bare one is."""
    plan = _plan({"family": "autodecay", "lr": 0.1, "warmup": {"epochs": 1}})
    assert plan.phases[0].schedule.loss_driven() and plan.in_large_step_phase(30)
    assert prefix_key("digits", {}, SEEDS, plan, 2) is None
