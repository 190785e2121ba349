"""Branching from a stored prefix: one trial's use of the checkpoint store (issue 13; Hippo, arXiv 2006.11972).

The schedule tree's leaves (``workers.tree``) share their trunk's training through it: a trial resumes from the
deepest checkpoint of its own prefix the store holds (whoever wrote it) and leaves checkpoints at the epochs it is
given that it trains through. Nothing here can fail a trial: a missing, evicted or corrupt checkpoint means
training from scratch, a store that cannot be written means no checkpoint left, and the trial's summary says so.

A checkpoint resumes bit-identically on CPU (``workers.train.Checkpoint``), so a branched trial ends as it would
have trained from scratch; its reused epochs are reported again, marked ``reused``, so its curve is whole.
(The spec's ``branching`` switch, which made a share of TPE's trials children of its best ones, is retired: the
tree replaced it.)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Container, Mapping
from dataclasses import dataclass, field
from typing import Any

from phasetune.search_spaces import space
from phasetune.search_spaces.plan import Plan
from phasetune.workers.checkpoints import CheckpointStore, prefix_keys
from phasetune.workers.seeding import Seeds
from phasetune.workers.train import Checkpoint

logger = logging.getLogger(__name__)

IO_BUDGET = 0.02  # a trial's checkpoint I/O stays within about this share of its time (one checkpoint over, at most)


def phase_count(params: Mapping[str, Any]) -> int:
    """How many phases a trial's params describe (0: its schedule is no ``phases``)."""
    indices = [index for name in params if (index := space.phase_index(name)) is not None]
    return max(indices) + 1 if indices else 0


def prefix_params(params: Mapping[str, Any], depth: int) -> dict[str, Any]:
    """The params of the first ``depth`` phases and the boundaries between them (and which option of the space)."""
    def in_prefix(name: str) -> bool:
        if name == space.CHOICE_PARAM:
            return True
        if (phase := space.phase_index(name)) is not None:
            return phase < depth
        if (boundary := space.boundary_index(name)) is not None:
            return boundary < depth - 1
        return False

    return {name: value for name, value in params.items() if in_prefix(name)}


@dataclass
class TrialBranch:
    """One trial's use of the checkpoint store: where it resumes, what it leaves, what that cost."""

    store: CheckpointStore | None
    keys: dict[int, str]  # checkpoint epoch -> the key of the trial's prefix ending there
    trial: int
    expected_parent: int | None = None
    parent: int | None = None
    branched_at: int | None = None  # the checkpoint's epoch: the trial trains from the next one
    written: int = 0
    bytes_written: int = 0
    io_seconds: float = 0.0
    problems: list[str] = field(default_factory=list)
    io_budget: float = IO_BUDGET
    skipped: int = 0  # checkpoint epochs passed over to keep within the I/O budget
    started: float = field(default_factory=time.perf_counter)

    @classmethod
    def open(cls, config: Mapping[str, Any], workload: str, params: Mapping[str, Any], seeds: Seeds, plan: Plan,
             trial: int) -> TrialBranch:
        """From the trial config's ``branching`` (``{root, max_bytes, epochs, parent}``, optionally ``io_budget``).
        Only checkpoints before the last phase begins: a prefix into it is shared by no other leaf."""
        started = time.perf_counter()
        branch = cls(None, {}, trial, expected_parent=config.get("parent"),
                     io_budget=float(config.get("io_budget", IO_BUDGET)))
        try:
            branch.store = CheckpointStore(config["root"], int(config["max_bytes"]))
        except OSError as err:
            branch.problems.append(f"no checkpoint store at {config['root']}: {err}")
        last_start = plan.phases[-1].start_step
        epochs = [int(e) for e in config.get("epochs", ()) if (int(e) + 1) * plan.steps_per_epoch <= last_start]
        keys = prefix_keys(workload, params, seeds, plan, epochs)
        branch.keys = {epoch: key for epoch, key in keys.items() if key is not None}
        branch.io_seconds += time.perf_counter() - started
        return branch

    def resume(self) -> Checkpoint | None:
        """The deepest stored checkpoint of this trial's prefix (None: from scratch, and why, when a parent was
        meant)."""
        started = time.perf_counter()
        found = None
        if self.store is not None:
            for epoch in sorted(self.keys, reverse=True):
                if (found := self.store.get(self.keys[epoch])) is not None:
                    self.parent, self.branched_at = found.trial, found.checkpoint.epoch
                    break
        if found is None and self.expected_parent is not None:
            self.problems.append(f"trained from scratch: no readable checkpoint of its prefix from trial "
                                 f"{self.expected_parent} (missing, evicted or corrupt)")
        self.io_seconds += time.perf_counter() - started
        return None if found is None else found.checkpoint

    @property
    def checkpoint_at(self) -> Container[int]:
        """The checkpoint epochs after the resumed one whose checkpoint the store does not hold yet, each taken
        only while the trial's checkpoint I/O so far is within ``IO_BUDGET`` of its time (asked as training
        reaches it: ``phasetune.workers.train``)."""
        if self.store is None:
            return set()
        after = -1 if self.branched_at is None else self.branched_at
        return _WithinBudget(self, {epoch for epoch, key in self.keys.items()
                                    if epoch > after and not self.store.has(key)})

    def save(self, checkpoint: Checkpoint) -> None:
        """Leave ``checkpoint`` in the store; a store that cannot take it costs the branch, not the trial."""
        if self.store is None:
            return
        started = time.perf_counter()
        try:
            self.bytes_written += self.store.put(self.keys[checkpoint.epoch], checkpoint, trial=self.trial)
            self.written += 1
        except OSError as err:
            logger.warning("phasetune: trial %d could not store its checkpoint at epoch %d: %s", self.trial,
                           checkpoint.epoch, err)
            self.problems.append(f"checkpoint at epoch {checkpoint.epoch} not stored: {err}")
        self.io_seconds += time.perf_counter() - started

    @property
    def reused_epochs(self) -> int:
        return 0 if self.branched_at is None else self.branched_at + 1

    def summary(self) -> dict[str, Any]:
        """The trial's ``branch`` attr."""
        return {"parent": self.parent, "branched_at_epoch": self.branched_at, "reused_epochs": self.reused_epochs,
                "checkpoints_written": self.written, "checkpoints_skipped": self.skipped,
                "bytes_written": self.bytes_written,
                "io_seconds": round(self.io_seconds, 6), "problems": list(self.problems)}


class _WithinBudget:
    """``TrialBranch.checkpoint_at``: an epoch is in it if it is a checkpoint epoch still to write and the trial's
    checkpoint I/O so far is at most ``io_budget`` (``IO_BUDGET``) of the time since it began (on a workload whose
    epochs take milliseconds, a checkpoint costs about as much as an epoch: it then leaves one every few)."""

    def __init__(self, branch: TrialBranch, epochs: set[int]) -> None:
        self._branch, self._epochs = branch, epochs

    def __contains__(self, epoch: object) -> bool:
        if epoch not in self._epochs:
            return False
        branch = self._branch
        if branch.io_seconds > branch.io_budget * (time.perf_counter() - branch.started):
            branch.skipped += 1
            return False
        return True
