"""A trial's per-epoch records in Optuna user attrs, written in constant work per epoch.

One attr holding the whole history would be rewritten every epoch: quadratic in epochs (a 100,000-epoch trial
would rewrite megabytes per epoch by its end). The history is cut into chunks of ``EPOCHS_PER_CHUNK`` epochs, each
its own attr (``metrics:00000``, ``metrics:00001``, ...); an epoch rewrites only the chunk it falls in, at most
once per ``FLUSH_S`` (an epoch sooner than that is written with the next one, or at the trial's end). ``history``
reads the chunks back in order. A retried trial starts again at epoch 0: the chunks its earlier run wrote beyond
the new run's are emptied, and ``history`` ends at an empty chunk.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from phasetune.workers.study_attrs import METRICS_LEGACY, METRICS_PREFIX, REALIZED_LR, REALIZED_MOMENTUM

EPOCHS_PER_CHUNK = 100
FLUSH_S = 1.0
PREFIX, LEGACY_KEY = METRICS_PREFIX, METRICS_LEGACY  # the chunks' attr names (owned by study_attrs)


def chunk_key(index: int) -> str:
    return f"{PREFIX}{index:05d}"


def history(user_attrs: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A trial's per-epoch records, in epoch order. A chunk left over from an earlier run of a retried trial (its
    epochs do not continue the current run's) ends the history there."""
    if LEGACY_KEY in user_attrs:
        return list(user_attrs[LEGACY_KEY])
    records: list[dict[str, Any]] = []
    for key in sorted(k for k in user_attrs if k.startswith(PREFIX)):
        if not user_attrs[key]:
            return records
        for record in user_attrs[key]:
            if record.get("epoch") != len(records):
                return records
            records.append(record)
    return records


def is_history_key(key: str) -> bool:
    return key == LEGACY_KEY or key.startswith(PREFIX)


class EpochLog:
    """The driver's view of one running trial's history: the open chunk's records and what is still unwritten."""

    def __init__(self) -> None:
        self._written_up_to = -1  # the highest chunk index ever written, over every run of the trial
        self._start()

    def _start(self) -> None:
        self.realised_written = False
        self.lr: list[float | None] = []
        self.momentum: list[float | None] = []
        self._chunk: list[dict[str, Any]] = []  # records of the chunk the last epoch fell in
        self._chunk_index = 0
        self._dirty: dict[int, list[dict[str, Any]]] = {}  # chunk index -> its records, not yet written
        self._flushed_at = -float("inf")

    @property
    def epochs(self) -> int:
        return len(self.lr)

    def add(self, record: dict[str, Any]) -> None:
        """Append ``record`` (its ``epoch`` is the next one, or 0: Tune retried the trial, which starts again)."""
        epoch = int(record["epoch"])
        index = epoch // EPOCHS_PER_CHUNK
        if epoch < self.epochs:  # a retry: the curve restarts rather than mixing two runs
            self._start()
            self._dirty.update({stale: [] for stale in range(index + 1, self._written_up_to + 1)})  # emptied
        if index != self._chunk_index:
            self._chunk, self._chunk_index = [], index
        self._chunk.append(record)
        self._dirty[index] = self._chunk
        self.lr.append(record.get("lr"))
        self.momentum.append(record.get("momentum"))

    def due(self, final: bool = False) -> dict[str, list[dict[str, Any]]]:
        """The chunk attrs to write now (all unwritten ones when ``final`` or ``FLUSH_S`` has passed), marked
        written."""
        now = time.monotonic()
        if not self._dirty or not (final or now - self._flushed_at >= FLUSH_S):
            return {}
        writes = {chunk_key(index): list(records) for index, records in self._dirty.items()}
        self._written_up_to = max(self._written_up_to, max(self._dirty))
        self._dirty.clear()
        self._flushed_at = now
        return writes

    def realised(self) -> dict[str, list[float | None]]:
        """The realised lr and momentum per epoch (written once, at the trial's end), marked written."""
        self.realised_written = True
        return {REALIZED_LR: self.lr, REALIZED_MOMENTUM: self.momentum}
