"""What a warm trial worker keeps between trials: a workload's data and its initial model, keyed by what makes them.

Ray Tune reuses a trial's worker process for the next trial (``reuse_actors``). Under the study's default seed
policy every trial trains on the same data from the same initial weights, so the worker builds them once: the data
for ``(workload, params, data seed)``, the initial model for that plus the init seed. A trial gets its own copy
of the model (it trains it) and its own ``Data`` record (``Workload.to`` replaces the splits in it); the tensors
themselves are shared, read-only. A few entries at most, the oldest dropped first.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

from torch import nn

from phasetune.workers.workloads.contract import Data

T = TypeVar("T")
ENTRIES = 2  # per kind: a worker rarely serves more than one study at a time


def params_key(params: Any) -> str:
    """A stable key of a workload's runtime params (paths included, so a moved data file is a new key)."""
    return json.dumps(params, sort_keys=True, default=str)


class WorkloadCache:
    def __init__(self, entries: int = ENTRIES) -> None:
        self._entries = entries
        self._data: OrderedDict[Hashable, Data] = OrderedDict()
        self._models: OrderedDict[Hashable, nn.Module] = OrderedDict()
        self.builds = {"data": 0, "model": 0}  # how often each was built rather than reused (what tests check)

    def data(self, key: Hashable, build: Callable[[], Data]) -> tuple[Data, bool]:
        """The data for ``key`` (built on a miss) and whether it was reused."""
        data, reused = self._get(self._data, key, build, "data")
        return dataclasses.replace(data), reused

    def model(self, key: Hashable, build: Callable[[], nn.Module]) -> tuple[nn.Module, bool]:
        """A fresh copy of the initial model for ``key`` (built on a miss) and whether it was reused."""
        model, reused = self._get(self._models, key, build, "model")
        return (copy.deepcopy(model) if key in self._models else model), reused  # the kept one stays initial

    def _get(self, store: OrderedDict[Hashable, T], key: Hashable, build: Callable[[], T], kind: str) -> tuple[T, bool]:
        if key in store:
            store.move_to_end(key)
            return store[key], True
        value = build()
        self.builds[kind] += 1
        store[key] = value
        while len(store) > self._entries:
            store.popitem(last=False)
        return value, False


PROCESS_CACHE = WorkloadCache()  # the trial worker's: lives as long as its process
