"""A store of training checkpoints keyed by the prefix they are the end of, for branching trials (issue 13).

A trial that trained a schedule prefix (its first epochs) leaves a ``Checkpoint`` here; a later trial whose schedule
starts with the same prefix, on the same workload, params and seeds, resumes from it instead of epoch 0. The key is
everything that determines the prefix (``prefix_key``). The store is a directory (any node's trials may share it:
the results volume in the compose cluster) capped at ``max_bytes``: the least recently used checkpoints go first.
Writes are atomic (a temporary file renamed into place); a checkpoint that is missing, evicted meanwhile or
corrupt is a miss (``get`` returns None and drops a corrupt file): the trial then trains from scratch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from phasetune.search_spaces.plan import Plan
from phasetune.workers.seeding import Seeds
from phasetune.workers.train import Checkpoint

logger = logging.getLogger(__name__)
SUFFIX = ".ckpt"
RESCAN_PUTS = 20  # the directory is scanned (and evicted down to the cap) at the first put and every 20th, and
# whenever what this object knows of the store's size passes the cap: other processes' writes count from the next


def prefix_key(workload: str, params: Mapping[str, Any], seeds: Seeds, plan: Plan, epoch: int) -> str | None:
    """The key of the checkpoint at the end of epoch ``epoch`` (0-based) of a trial: the workload, its params and
    seeds (data, initial weights, batch order), and what the plan trains the first ``epoch + 1`` epochs with. None
    where the prefix cannot be shared (a loss-driven phase in it)."""
    return prefix_keys(workload, params, seeds, plan, [epoch])[epoch]


def prefix_keys(workload: str, params: Mapping[str, Any], seeds: Seeds, plan: Plan,
                epochs: list[int] | tuple[int, ...]) -> dict[int, str | None]:
    """``prefix_key`` at each of ``epochs``, in one pass over the plan's steps."""
    signatures = plan.prefix_signatures(epoch + 1 for epoch in epochs)
    return {epoch: _key(workload, params, seeds, plan, epoch, signatures[epoch + 1]) for epoch in epochs}


def _key(workload: str, params: Mapping[str, Any], seeds: Seeds, plan: Plan, epoch: int,
         signature: str | None) -> str | None:
    if signature is None:
        return None
    identity = json.dumps({"workload": workload, "params": dict(params), "seeds": dataclasses.asdict(seeds),
                           "steps_per_epoch": plan.steps_per_epoch, "epoch": epoch, "plan": signature},
                          sort_keys=True, default=str)
    return hashlib.sha256(identity.encode()).hexdigest()


@dataclass(frozen=True)
class Stored:
    """A checkpoint from the store, and the trial that wrote it (the parent of a trial branching from it)."""

    checkpoint: Checkpoint
    trial: int | None


class CheckpointStore:
    def __init__(self, root: str | Path, max_bytes: int) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.root.mkdir(parents=True, exist_ok=True)
        self._estimate = 0  # the store's bytes as of the last scan, plus what this object wrote since
        self._puts = 0

    def _path(self, key: str) -> Path:
        return self.root / f"{key}{SUFFIX}"

    def put(self, key: str, checkpoint: Checkpoint, trial: int | None = None) -> int:
        """Store ``checkpoint``, written by trial number ``trial``, under ``key`` (replacing one there); its size in
        bytes. Then evict down to the cap."""
        descriptor, temporary = tempfile.mkstemp(dir=self.root, suffix=".tmp")
        try:
            with os.fdopen(descriptor, "wb") as out:
                torch.save({"trial": trial, "checkpoint": dataclasses.asdict(checkpoint)}, out)
            os.replace(temporary, self._path(key))
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
            raise
        size = self._path(key).stat().st_size
        self._estimate += size
        self._puts += 1
        if self._estimate > self.max_bytes or self._puts % RESCAN_PUTS == 1:  # (a scan lists the whole directory)
            self._evict()
        return size

    def has(self, key: str) -> bool:
        return self._path(key).exists()

    def get(self, key: str) -> Stored | None:
        """The checkpoint under ``key``, or None (missing, evicted, unreadable: the caller trains from scratch)."""
        path = self._path(key)
        try:
            with open(path, "rb") as source:
                state = torch.load(source, map_location="cpu", weights_only=True)
            stored = Stored(Checkpoint(**state["checkpoint"]), state["trial"])
        except FileNotFoundError:
            return None
        except Exception as err:  # noqa: BLE001  (corrupt or from another version: a miss, and it goes)
            logger.warning("phasetune: dropping unreadable checkpoint %s (%s)", path.name, err)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            return None
        with contextlib.suppress(FileNotFoundError):
            os.utime(path)  # recently used
        return stored

    def _entries(self) -> list[tuple[float, int, Path]]:
        found = []
        for path in self.root.glob(f"*{SUFFIX}"):
            with contextlib.suppress(FileNotFoundError):  # evicted by another process meanwhile
                stat = path.stat()
                found.append((stat.st_mtime, stat.st_size, path))
        return sorted(found)

    def _evict(self) -> None:
        entries = self._entries()
        total = sum(size for _, size, _ in entries)
        self._estimate = total
        for _, size, path in entries:  # least recently used first
            if total <= self.max_bytes:
                break
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            total -= size
            self._estimate = total

    def stats(self) -> dict[str, int]:
        """What the store holds: ``checkpoints`` and ``bytes``."""
        entries = self._entries()
        return {"checkpoints": len(entries), "bytes": sum(size for _, size, _ in entries)}
