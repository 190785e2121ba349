"""The probes' kinds and statuses, as the API, the storage and the CLI name them.

Names only, no imports: the CLI (``phasetune probe``) reads them without loading what runs probes (torch, Ray,
Optuna); ``workers.probing`` runs them and ``service.db`` stores their statuses.
"""

from __future__ import annotations

import enum


class ProbeKind(str, enum.Enum):
    CURVATURE = "curvature"  # λ0, lr_crit = 2/λ0
    LR_RANGE = "lr_range"  # lr_start, lr_best, lr_div


class ProbeStatus(str, enum.Enum):
    RUNNING = "running"  # submitted to Ray (or waiting for its resources)
    DONE = "done"
    FAILED = "failed"
