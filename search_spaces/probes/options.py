"""The probes' options and their defaults, in one place: the probe functions, the study driver and the REST
edge (``POST /probes``) all take them from here."""

from __future__ import annotations

from dataclasses import dataclass

PROBE_BATCH = 256  # examples in the fixed probe batch (see ``curvature.probe_batch`` on why not fewer)


@dataclass(frozen=True)
class CurvatureOptions:
    probe_batch: int = PROBE_BATCH
    iters: int = 50  # maximum G-vector products (Lanczos steps)
    tol: float = 1e-3  # stop once |dλ|/λ < tol
    mode: str = "train"  # "train" | "eval": the BatchNorm/dropout mode the model is evaluated in


@dataclass(frozen=True)
class LRRangeOptions:
    lr_low: float = 1e-7  # fastai's geometric ramp, 1e-7 to 10 over 100 steps
    lr_high: float = 10.0
    steps: int = 100
    batch_size: int | None = None  # None: the workload's
