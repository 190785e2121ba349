"""The cooldown probe: how good would this trial be if its LR decayed now?

The warmup-stable-decay literature evaluates a constant-LR checkpoint by annealing a copy of it to zero over a short
span and evaluating the copy. So does this: the model's and optimizer's state (and torch's RNG) are saved, the
running optimizer takes ``fraction`` of the steps done so far with the LR falling linearly from the last step's
to zero (at the last step's momentum), the copy is evaluated on the validation split, and
everything saved is put back. Training then goes on exactly as it would have without the probe (a test checks the
weights bit for bit), so a probe costs compute and changes nothing else.
"""

from __future__ import annotations

import copy
import math
import time
from typing import Any

import torch

from phasetune.search_spaces.phased import PhasedOptimizer, apply_to_optimizer
from phasetune.workers.seeding import batch_order, stream_seed
from phasetune.workers.study_attrs import COOLDOWN_PREFIX, COOLDOWN_SECONDS, COOLDOWN_STEPS
from phasetune.workers.workloads import Workload


def cooldown_probe(workload: Workload, driver: PhasedOptimizer, fraction: float, order_seed: int,
                   epoch: int) -> dict[str, Any]:
    """Probe after ``epoch`` (0-based); ``cooldown_<val metric>`` for each validation metric, ``cooldown_steps``
    and ``cooldown_seconds``. Batches follow an order of the probe's own (seeded by ``order_seed`` and ``epoch``)."""
    started = time.perf_counter()
    model, optimizer, train_split = workload.model, driver.optimizer, workload.data.train
    steps = max(1, math.ceil(fraction * driver.steps_done))
    now = driver.plan(max(0, driver.steps_done - 1))  # the lr and momentum of the last step taken
    saved_model = copy.deepcopy(model.state_dict())
    saved_optimizer = copy.deepcopy(optimizer.state_dict())
    saved_rng = torch.get_rng_state()
    saved_cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        model.train()
        seed, taken, round_ = stream_seed(order_seed, f"cooldown:{epoch}"), 0, 0
        while taken < steps:
            for x, y in workload.batches(train_split, batch_order(len(train_split), seed, round_)):
                apply_to_optimizer(optimizer, now.lr * (1 - taken / steps), now.momentum)
                loss = workload.loss(workload.forward(x), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                taken += 1
                if taken == steps:
                    break
            round_ += 1
        metrics = workload.evaluate(workload.data.val, "val")
    finally:
        model.load_state_dict(saved_model)
        optimizer.load_state_dict(saved_optimizer)
        torch.set_rng_state(saved_rng)
        if saved_cuda_rng is not None:
            torch.cuda.set_rng_state_all(saved_cuda_rng)
        model.train()
    return {**{COOLDOWN_PREFIX + key: value for key, value in metrics.items()},
            COOLDOWN_STEPS: steps, COOLDOWN_SECONDS: time.perf_counter() - started}
