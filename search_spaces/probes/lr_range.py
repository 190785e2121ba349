"""LR range test (spec §1.7; Smith 2017, fastai variant): η_start, η_best and η_div from one short run.

The LR rises geometrically from ``lr_low`` to ``lr_high`` over ``steps`` updates; the loss is smoothed by
a bias-corrected EMA and the run stops once the smoothed loss exceeds 4 × its minimum (or is not finite).
The model is handed back exactly as it came: weights, buffers, ``.grad``, train/eval mode and the global
RNG state. The optimizer is created here and thrown away, so there is no optimizer state to leak.

Pure torch: takes a model, a batch and a loss kind; it must not import ``workers``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from phasetune.search_spaces.probes.curvature import LOSS_KINDS
from phasetune.search_spaces.probes.options import LRRangeOptions

OPTIMIZERS = ("sgd", "adam")
DIV_FACTOR = 4.0  # fastai stop_div: smoothed loss > 4 × its minimum
# η_start is the first LR whose smoothed loss is below (1 − START_DROP) × the first smoothed loss. The
# first smoothed value is the initial loss itself (bias correction), so this reads "the loss has fallen by
# 5%": large enough to sit above minibatch noise once the EMA has averaged a few batches, small enough to
# mark the onset rather than the steep part. If it never falls that far, η_start = η_best.
START_DROP = 0.05


@dataclass(frozen=True)
class LRRangeResult:
    """The three LRs and the curve they were read from (``losses`` are the smoothed losses)."""

    lr_start: float
    lr_best: float
    lr_div: float
    diverged: bool  # False: the ramp ended without divergence and lr_div is the last LR tried
    lrs: list[float]
    losses: list[float]
    loss_kind: str
    optimizer: str
    momentum: float
    batch_size: int


def lr_range_test(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    loss: str | Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    lr_low: float = LRRangeOptions.lr_low,
    lr_high: float = LRRangeOptions.lr_high,
    steps: int = LRRangeOptions.steps,
    batch_size: int | None = LRRangeOptions.batch_size,
    beta: float = 0.98,
    optimizer: str = "sgd",
    momentum: float = 0.0,
    seed: int = 0,
) -> LRRangeResult:
    """Run the range test on (inputs, targets) and restore the model afterwards.

    Args:
        model: the network, trained in train mode during the test and restored afterwards.
        inputs: training inputs, on the model's device.
        targets: matching targets.
        loss: one of ``LOSS_KINDS``, or the loss itself (any callable ``(outputs, targets) -> mean loss``: the
            range test, unlike the curvature probe, needs no output Hessian).
        lr_low: first LR of the geometric ramp.
        lr_high: last LR of the ramp (reached only if the loss never diverges).
        steps: number of updates (LRs) in the ramp.
        batch_size: minibatch size; ``None`` means full batch (GD), the setting the §1.7 test uses.
        beta: EMA factor of the loss.
        optimizer: "sgd" (torch SGD with ``momentum``) or "adam" (torch defaults; ``momentum`` must be 0).
        momentum: SGD momentum μ; the effective step is then about η/(1−μ) (spec §1.8).
        seed: seed of the minibatch order.
    """
    loss_kind = loss if isinstance(loss, str) else "custom"
    _check(inputs, targets, loss, lr_low, lr_high, steps, beta, optimizer, momentum)
    n = len(inputs)
    bs = n if batch_size is None else min(batch_size, n)
    if bs < 1:
        raise ValueError(f"batch_size must be >= 1 ({batch_size=})")
    loss_fn = _loss_fn(loss) if isinstance(loss, str) else loss
    ratio = lr_high / lr_low
    lrs_all = [lr_low * ratio ** (i / max(steps - 1, 1)) for i in range(steps)]
    batches = _batches(n, bs, seed, inputs.device)

    saved = _save(model)
    params = [p for p in model.parameters() if p.requires_grad]
    opt: torch.optim.Optimizer
    if optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=lr_low, momentum=momentum)
    else:
        opt = torch.optim.Adam(params, lr=lr_low)
    lrs: list[float] = []
    losses: list[float] = []
    avg, best, diverged = 0.0, math.inf, False
    try:
        model.train()
        for i, lr in enumerate(lrs_all):
            for group in opt.param_groups:
                group["lr"] = lr
            idx = next(batches)
            opt.zero_grad(set_to_none=True)
            batch_loss = loss_fn(model(inputs[idx]), targets[idx])
            value = float(batch_loss.detach())
            avg = beta * avg + (1 - beta) * value
            smooth = avg / (1 - beta ** (i + 1))
            lrs.append(lr)
            losses.append(smooth)
            if not math.isfinite(smooth) or smooth > DIV_FACTOR * best:
                diverged = True
                break
            best = min(best, smooth)
            batch_loss.backward()
            opt.step()
    finally:
        _restore(model, saved)
    return _read(lrs, losses, diverged, loss_kind, optimizer, momentum, bs)


def _read(
    lrs: list[float], losses: list[float], diverged: bool, loss_kind: str, optimizer: str, momentum: float, bs: int
) -> LRRangeResult:
    """η_best = argmin of the smoothed loss, η_start = first drop by START_DROP, η_div = where we stopped."""
    finite = [(loss, i) for i, loss in enumerate(losses) if math.isfinite(loss)]
    i_best = min(finite)[1] if finite else 0
    threshold = (1 - START_DROP) * losses[0]
    i_start = next((i for i in range(i_best + 1) if losses[i] < threshold), i_best)
    return LRRangeResult(
        lr_start=lrs[i_start],
        lr_best=lrs[i_best],
        lr_div=lrs[-1],
        diverged=diverged,
        lrs=lrs,
        losses=losses,
        loss_kind=loss_kind,
        optimizer=optimizer,
        momentum=momentum,
        batch_size=bs,
    )


def _check(
    inputs: torch.Tensor,
    targets: torch.Tensor,
    loss: str | Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    lr_low: float,
    lr_high: float,
    steps: int,
    beta: float,
    optimizer: str,
    momentum: float,
) -> None:
    if isinstance(loss, str) and loss not in LOSS_KINDS:
        raise ValueError(f"unknown loss kind {loss!r}; one of {LOSS_KINDS} (or pass the loss itself)")
    if not isinstance(loss, str) and not callable(loss):
        raise ValueError(f"loss must be one of {LOSS_KINDS} or a callable, got {loss!r}")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS} ({optimizer=})")
    if optimizer == "adam" and momentum != 0.0:
        raise ValueError(f"momentum applies to SGD only ({optimizer=}, {momentum=})")
    if not 0 < lr_low < lr_high:
        raise ValueError(f"need 0 < lr_low < lr_high ({lr_low=}, {lr_high=})")
    if steps < 2 or not 0 <= beta < 1 or not 0 <= momentum < 1:
        raise ValueError(f"need steps >= 2, 0 <= beta < 1, 0 <= momentum < 1 ({steps=}, {beta=}, {momentum=})")
    if len(inputs) == 0 or len(inputs) != len(targets):
        raise ValueError(f"need a non-empty batch with one target per input ({len(inputs)=}, {len(targets)=})")


def _loss_fn(kind: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    # Same definitions as workers.workloads.base.loss_fn (probes must not import workers).
    if kind == "cross_entropy":
        return nn.functional.cross_entropy
    if kind == "mse":
        return nn.functional.mse_loss
    return lambda out, y: 0.5 * ((out - y) ** 2).sum(dim=-1).mean()


def _batches(n: int, bs: int, seed: int, device: torch.device) -> Iterator[slice | torch.Tensor]:
    """Endless minibatch indices: reshuffled epochs from a private generator (full batch: a slice)."""
    if bs >= n:
        full = slice(None)
        while True:
            yield full
    gen = torch.Generator().manual_seed(seed)
    while True:
        perm = torch.randperm(n, generator=gen).to(device)
        for start in range(0, n - bs + 1, bs):  # drop the ragged tail: equal-size batches, equal noise
            yield perm[start : start + bs]


# (state_dict copy, per-module training flags, .grad copies, CPU RNG state, CUDA RNG states)
_Saved = tuple[
    dict[str, torch.Tensor], dict[nn.Module, bool], list[torch.Tensor | None], torch.Tensor, list[torch.Tensor]
]


def _save(model: nn.Module) -> _Saved:
    state = {k: t.detach().clone() for k, t in model.state_dict(keep_vars=True).items()}
    modes = {m: m.training for m in model.modules()}
    grads = [None if p.grad is None else p.grad.detach().clone() for p in model.parameters()]
    cuda = [torch.cuda.get_rng_state(d) for d in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    return state, modes, grads, torch.get_rng_state(), cuda


def _restore(model: nn.Module, saved: _Saved) -> None:
    """Copy values back in place: the Parameter objects stay the same, so a caller's optimizer still holds them."""
    state, modes, grads, cpu_rng, cuda_rng = saved
    with torch.no_grad():
        for k, t in model.state_dict(keep_vars=True).items():
            t.copy_(state[k])
    for m, flag in modes.items():
        m.training = flag
    for p, g in zip(model.parameters(), grads):
        p.grad = g
    torch.set_rng_state(cpu_rng)
    for d, s in enumerate(cuda_rng):
        torch.cuda.set_rng_state(s, d)
