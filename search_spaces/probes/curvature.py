"""Curvature probe (spec §4): the top eigenvalue λ0 of the Gauss-Newton matrix and lr_crit = 2/λ0.

G = (1/m) Σ_α J_αᵀ H_α J_α, with H_α = ∂²ℓ/∂f² the output Hessian of the loss actually used. Putting H
inside G makes 2/λ0 the stability edge of GD for *that* loss, whatever its normalisation (spec §4,
"Normalisation rule"). G is never formed: power iteration needs only J v (forward-mode ``jvp``) and Jᵀ u
(reverse-mode ``vjp``), i.e. about one forward and one backward pass per iteration.

Pure torch: takes a model, a batch and a loss kind; it must not import ``workers``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call, jacrev, jvp, vjp

# Same names as workers.workloads.base.LOSS_KINDS (duplicated: probes must not import workers).
#   "cross_entropy": mean softmax cross-entropy, H_α = diag(p) − ppᵀ;
#   "mse": torch MSELoss(reduction="mean") over k outputs per example, H_α = (2/k)·I;
#   "half_sum_squares": 0.5·‖f − y‖² summed over outputs, mean over examples, H_α = I.
LOSS_KINDS = ("cross_entropy", "mse", "half_sum_squares")
MODES = ("train", "eval")

# Default size of the fixed probe batch (bench/probe_cost.py). λ0 of a random subset is biased upwards
# (λ_max is convex, a few large-gradient examples dominate a small average), so a small batch gives a
# conservative lr_crit: at 256, ps10 is within 2% of the full-set λ0 and digits within +6..42% (64: up to
# 5x). The probe then costs about 1-3 epochs of training: < 5% of a 30-epoch ps10 or digits trial, but
# 10-20% of a 10-epoch one. It runs once per study, so its share of a whole study is far smaller.
PROBE_BATCH = 256

Params = dict[str, torch.Tensor]


@dataclass(frozen=True)
class CurvatureResult:
    """λ0 = λ_max(G) on a fixed batch and the critical learning rate 2/λ0 for plain GD."""

    lambda0: float
    lr_crit: float
    iterations: int
    batch_size: int
    mode: str  # "train" or "eval": BatchNorm/dropout mode the model was evaluated in
    loss_kind: str
    converged: bool  # |Δλ|/λ < tol reached within ``iters``


def probe_batch(
    inputs: torch.Tensor, targets: torch.Tensor, max_examples: int = PROBE_BATCH, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed random subset of at most ``max_examples`` examples (the whole set if it is smaller).

    The probe's cost is linear in the batch; a subset over-estimates the full-set λ0 (see PROBE_BATCH),
    less so as it grows. For full-batch GD pass ``max_examples=len(inputs)``: the spec's probe batch is
    then the whole training set. The same seed gives the same batch.

    Args:
        inputs: training inputs, first dimension = examples.
        targets: matching targets.
        max_examples: upper bound on the batch size.
        seed: seed of the subset draw (a private generator; the global RNG is untouched).
    """
    if max_examples < 1:
        raise ValueError(f"max_examples must be >= 1 ({max_examples=})")
    n = len(inputs)
    if n <= max_examples:
        return inputs, targets
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(n, generator=gen)[:max_examples].to(inputs.device)
    return inputs[idx], targets[idx.to(targets.device)]


def estimate_curvature(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    loss_kind: str,
    iters: int = 50,
    tol: float = 1e-3,
    mode: str = "train",
    seed: int = 0,
) -> CurvatureResult:
    """Power iteration on G for ``model`` at its current weights on the batch (inputs, targets).

    Args:
        model: the network; its weights, buffers and train/eval mode are left as they were.
        inputs: the probe batch, on the model's device (use ``probe_batch`` for a fixed subset).
        targets: matching targets; G does not depend on them for these losses, they are checked only.
        loss_kind: one of ``LOSS_KINDS``; sets the output Hessian H.
        iters: maximum number of power iterations.
        tol: stop once the relative change of the Rayleigh quotient is below ``tol``.
        mode: "train" (the mode training uses: BatchNorm on batch statistics, dropout on) or "eval".
        seed: seed of the start vector and of the (fixed) dropout masks.

    Returns:
        A ``CurvatureResult``; ``lr_crit`` is ``inf`` if G is zero on this batch.
    """
    _check(inputs, targets, loss_kind, mode)
    if iters < 1 or tol <= 0:
        raise ValueError(f"need iters >= 1 and tol > 0 ({iters=}, {tol=})")
    m = len(inputs)
    with _probe_mode(model, inputs, mode, seed) as f:
        params = _params(model)
        out, vjp_fn = vjp(f, params)  # linearisation point fixed: vjp_fn is reused every iteration
        h = _output_hessian(out.detach(), loss_kind)
        gen = torch.Generator(device=inputs.device).manual_seed(seed)
        v = {k: torch.randn(p.shape, generator=gen, device=p.device, dtype=p.dtype) for k, p in params.items()}
        v = _scale(v, 1.0 / _norm(v))
        lam, converged, it = 0.0, False, 0
        for it in range(1, iters + 1):
            _, ju = jvp(f, (params,), (v,))  # u = J v, one value per output entry
            (w,) = vjp_fn(h(ju) / m)  # w = Jᵀ H u / m = G v
            # Rayleigh quotient (‖v‖ = 1) and ‖w‖², read back in one device sync per iteration
            dot = torch.stack([(v[k] * w[k]).sum() for k in v]).sum()
            sq = torch.stack([(w[k] * w[k]).sum() for k in w]).sum()
            new, sq_norm = torch.stack([dot, sq]).tolist()
            norm = math.sqrt(sq_norm)
            if norm == 0.0:  # G v = 0: a dead network or a constant model on this batch
                lam, converged = 0.0, True
                break
            v = _scale(w, 1.0 / norm)
            if it > 1 and abs(new - lam) <= tol * abs(new):
                lam, converged = new, True
                break
            lam = new
    lr_crit = 2.0 / lam if lam > 0 else math.inf
    return CurvatureResult(lam, lr_crit, it, m, mode, loss_kind, converged)


def exact_curvature(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    loss_kind: str,
    mode: str = "train",
    seed: int = 0,
) -> float:
    """Exact λ_max(G) from the full Jacobian: the test oracle for small nets (P·m·k ≲ 1e8).

    Uses λ_max((1/m) Jᵀ H J) = λ_max((1/m) H^{1/2} J Jᵀ H^{1/2}), an (m·k)² eigenproblem, in float64.
    Outputs must be (m, k) (for cross-entropy: logits with classes on dim 1).

    Args:
        model: the network (state and mode are restored afterwards).
        inputs: the batch.
        targets: matching targets (checked only).
        loss_kind: one of ``LOSS_KINDS``.
        mode: "train" or "eval", as in ``estimate_curvature``.
        seed: seed of the fixed dropout masks.
    """
    _check(inputs, targets, loss_kind, mode)
    m = len(inputs)
    with _probe_mode(model, inputs, mode, seed) as f:
        params = _params(model)
        out = f(params).detach()
        jac = jacrev(f)(params)  # {name: (m, *out_shape[1:], *param_shape)}
    k = out[0].numel()
    jmat = torch.cat([j.reshape(m * k, -1) for j in jac.values()], dim=1).double()
    ntk = jmat @ jmat.T  # (m·k, m·k)
    sqrt_h = torch.block_diag(*[_sqrt_psd(b) for b in _hessian_blocks(out.reshape(m, k).double(), loss_kind)])
    g_dual = sqrt_h @ ntk @ sqrt_h / m
    return float(torch.linalg.eigvalsh(g_dual).max())


# ---------------------------------------------------------------------------------------------- helpers


def _check(inputs: torch.Tensor, targets: torch.Tensor, loss_kind: str, mode: str) -> None:
    if loss_kind not in LOSS_KINDS:
        raise ValueError(f"unknown loss kind {loss_kind!r}; one of {LOSS_KINDS}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES} ({mode=})")
    if len(inputs) == 0 or len(inputs) != len(targets):
        raise ValueError(f"need a non-empty batch with one target per input ({len(inputs)=}, {len(targets)=})")


def _params(model: nn.Module) -> Params:
    return {k: p.detach() for k, p in model.named_parameters() if p.requires_grad}


def _norm(v: Params) -> float:
    return math.sqrt(sum(float((t * t).sum()) for t in v.values()))


def _scale(v: Params, s: float) -> Params:
    return {k: t * s for k, t in v.items()}


def _output_hessian(out: torch.Tensor, loss_kind: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """u ↦ H u applied per example; H is evaluated at ``out`` (it depends on f only for cross-entropy)."""
    if loss_kind == "half_sum_squares":
        return lambda u: u
    if loss_kind == "mse":
        k = out[0].numel()  # MSELoss(mean) averages over all m·k entries: ℓ_α = ‖f_α − y_α‖²/k
        return lambda u: u * (2.0 / k)
    p = torch.softmax(out, dim=1)  # logits (m, C[, ...]); classes on dim 1, as in F.cross_entropy
    return lambda u: p * u - p * (p * u).sum(dim=1, keepdim=True)


def _hessian_blocks(out: torch.Tensor, loss_kind: str) -> list[torch.Tensor]:
    m, k = out.shape
    if loss_kind == "cross_entropy":
        p = torch.softmax(out, dim=1)
        return [torch.diag(pa) - torch.outer(pa, pa) for pa in p]
    scale = 1.0 if loss_kind == "half_sum_squares" else 2.0 / k
    return [scale * torch.eye(k, dtype=out.dtype, device=out.device)] * m


def _sqrt_psd(h: torch.Tensor) -> torch.Tensor:
    evals, evecs = torch.linalg.eigh(h)
    return (evecs * evals.clamp(min=0).sqrt()) @ evecs.T


@contextlib.contextmanager
def _probe_mode(
    model: nn.Module, inputs: torch.Tensor, mode: str, seed: int
) -> Iterator[Callable[[Params], torch.Tensor]]:
    """Yield f(params) -> outputs in ``mode``, leaving the model exactly as it was.

    - train/eval mode is set for the probe and restored afterwards;
    - in train mode BatchNorm uses batch statistics but must not update its running stats (an in-place
      update inside jvp/vjp would both mutate the model and fail under torch.func), so they are detached
      from the modules for the duration and put back;
    - dropout masks are made identical in every call by reseeding inside f (G must be one fixed matrix),
      and the caller's RNG state is restored on exit.
    """
    was_training = {mod: mod.training for mod in model.modules()}
    stashed: list[tuple[nn.Module, dict[str, torch.Tensor | None]]] = []
    device = inputs.device

    def reseed() -> None:  # CPU and the batch's device only, both inside the fork below
        torch.default_generator.manual_seed(seed)
        if device.type == "cuda":
            with torch.cuda.device(device):
                torch.cuda.manual_seed(seed)

    try:
        model.train(mode == "train")
        if mode == "train":
            for mod in model.modules():
                if isinstance(mod, nn.modules.batchnorm._BatchNorm) and mod.track_running_stats:
                    names = ("running_mean", "running_var", "num_batches_tracked")
                    stashed.append((mod, {n: getattr(mod, n) for n in names}))
                    for n in names:
                        setattr(mod, n, None)
        buffers = dict(model.named_buffers())

        def f(params: Params) -> torch.Tensor:
            reseed()
            return functional_call(model, (params, buffers), (inputs,))

        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            yield f
    finally:
        for mod, saved in stashed:
            for n, t in saved.items():
                setattr(mod, n, t)
        for mod, flag in was_training.items():
            mod.training = flag

