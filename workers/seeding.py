"""The study's seed policy: what a trial's data, initial weights and batch order are drawn from.

Trials of one study must train on the same problem, or the search chases seed noise (two trials with one constant
schedule on digits once ended two points apart from seeds alone). So the data (split, synthetic draws, fixed random
features) always come from the study's seed, and so do the initial weights and the batch order unless the spec's
``seed_policy`` asks for per-trial ones (a robustness study). Each named stream ("split", "init", ...) gets its own
seed, so changing one (``n_train``) never moves another (the initial weights).

The batch order of epoch ``e`` is a pure function of (order seed, ``e``): a run resumed at any epoch, or a trial
branched from another's checkpoint, sees the same batches as one trained straight through.
"""

from __future__ import annotations

import enum
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import numpy as np
import torch

SEED_MAX = 2**32 - 1  # what numpy's and Optuna's samplers accept


class SeedScope(str, enum.Enum):
    """Whose seed a stream comes from: the study's (every trial alike) or the trial's own."""

    STUDY = "study"
    TRIAL = "trial"


@dataclass(frozen=True)
class SeedPolicy:
    """Which streams vary per trial. The data never do: trials of one study always learn the same problem."""

    init: SeedScope = SeedScope.STUDY
    batch_order: SeedScope = SeedScope.STUDY


@dataclass(frozen=True)
class Seeds:
    """The seeds one run uses: ``data`` (split, synthetic draws, fixed features), ``init`` (trained weights) and
    ``batch_order`` (the shuffle of every epoch)."""

    data: int
    init: int
    batch_order: int

    @classmethod
    def shared(cls, seed: int) -> Seeds:
        """Every stream from one seed: what a study's trials use by default, and what its probes measure."""
        return cls(seed, seed, seed)

    def as_attrs(self) -> dict[str, int]:
        return asdict(self)


def stream_seed(seed: int, stream: str) -> int:
    """An independent 32-bit seed for the named ``stream`` of ``seed``."""
    key = zlib.crc32(stream.encode())
    return int(np.random.SeedSequence([seed & 0xFFFFFFFF, seed >> 32 & 0xFFFFFFFF, key]).generate_state(1)[0])


def trial_seeds(study_seed: int, policy: SeedPolicy, trial_number: int) -> Seeds:
    """The seeds of trial ``trial_number`` under ``policy``: the study's, or a per-trial stream of it."""
    per_trial = stream_seed(study_seed, f"trial:{trial_number}")

    def pick(scope: SeedScope) -> int:
        return study_seed if scope is SeedScope.STUDY else per_trial

    return Seeds(data=study_seed, init=pick(policy.init), batch_order=pick(policy.batch_order))


def generator(seed: int, stream: str) -> torch.Generator:
    """A CPU generator for one named stream ("split", "features", ...) of ``seed``."""
    return torch.Generator().manual_seed(stream_seed(seed, stream))


@contextmanager
def seeded_init(seed: int, stream: str = "init") -> Iterator[None]:
    """Seed torch's global RNG while modules are built (nn.Linear draws from it), then restore it."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(stream_seed(seed, stream))
        yield


def batch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The permutation of ``n`` training examples that epoch ``epoch`` visits (on the CPU)."""
    return torch.randperm(n, generator=generator(seed, f"batch_order:{epoch}"))
