"""Curvature probe (spec §4): the top eigenvalue λ0 of the Gauss-Newton matrix and lr_crit = 2/λ0.

G = (1/m) Σ_α J_αᵀ H_α J_α, with H_α = ∂²ℓ/∂f² the output Hessian of the loss actually used. Putting H
inside G makes 2/λ0 the stability edge of GD for *that* loss, whatever its normalisation (spec §4,
"Normalisation rule"). G is never formed for a real network: Lanczos needs only G-vector products, each made
of J v and Jᵀ u, two backward passes over the graph of a single forward pass (see ``_gauss_newton_product``).
Only a model with at most ``DENSE_MAX_PARAMS`` parameters gets G itself, from one vectorised product.

Pure torch: takes a model, a batch and a loss kind; it must not import ``workers``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, jacrev

from phasetune.search_spaces.probes.linear_chain import LinearChain
from phasetune.search_spaces.probes.options import PROBE_BATCH, CurvatureOptions

# Same names as workers.workloads.base.LOSS_KINDS (duplicated: probes must not import workers).
#   "cross_entropy": mean softmax cross-entropy, H_α = diag(p) − ppᵀ;
#   "mse": torch MSELoss(reduction="mean") over k outputs per example, H_α = (2/k)·I;
#   "half_sum_squares": 0.5·‖f − y‖² summed over outputs, mean over examples, H_α = I.
LOSS_KINDS = ("cross_entropy", "mse", "half_sum_squares")
MODES = ("train", "eval")

# PROBE_BATCH (options.py), the default size of the fixed probe batch (bench/probe_cost.py). λ0 of a random subset
# is biased upwards (λ_max is convex, a few large-gradient examples dominate a small average), so a small batch gives a
# conservative lr_crit: at 256, ps10 is within 2% of the full-set λ0 and digits within +6..42% (64: up to
# 5x). The probe then costs 0.35-0.5 epochs of training on the built-in workloads, under 5% of a 10-epoch
# trial. It runs once per study, so its share of a whole study is far smaller.

# Up to this many trainable parameters G is formed whole (one vectorised product with the identity) and
# eigvalsh gives λ0 exactly: for such a model that is cheaper than Lanczos's per-step overhead.
DENSE_MAX_PARAMS = 64
METHODS = ("auto", "lanczos", "dense")
# Start vector Jᵀ H u: u is a random output direction shared by every example plus this much per-example noise.
_START_NOISE = 0.25

# Lanczos steps between restarts (the basis holds this many parameter-sized vectors) and the relative size
# of β below which the Krylov space counts as invariant (float32 round-off after reorthogonalisation).
LANCZOS_RESTART = 10
_INVARIANT = 1e-5
# Convergence also needs the top Ritz pair's residual below _RESIDUAL·tol·θ (its value error is ~ residual²/gap).
_RESIDUAL = 10.0

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
    converged: bool  # |Δλ|/λ < tol (with a small residual) reached within ``iters``
    method: str = "lanczos"  # "dense" (G formed whole), "lanczos" (autograd products), "lanczos_chain" (closed form)


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
    iters: int = CurvatureOptions.iters,
    tol: float = CurvatureOptions.tol,
    mode: str = CurvatureOptions.mode,
    seed: int = 0,
    method: str = "auto",
) -> CurvatureResult:
    """Lanczos on G for ``model`` at its current weights on the batch (inputs, targets).

    Lanczos with full reorthogonalisation, restarted from the top Ritz vector every ``LANCZOS_RESTART``
    steps (memory: that many parameter-sized vectors). Its top Ritz value converges much faster than power
    iteration's Rayleigh quotient for the same number of G-vector products, above all when the top two
    eigenvalues are close. A G-vector product reuses one forward pass: J v is a backward pass through the
    graph of u ↦ Jᵀ u (the double-vjp trick), Jᵀ u a backward pass through the forward graph.

    The start vector is Jᵀ H u, not a random parameter vector: it lies in the range of G (a random vector is
    almost all null space once P ≫ m·k, and the first step only removes it), and u, a random output direction
    shared by every example plus a little per-example noise, leans towards the mode in which all examples move
    together, which dominates a network's NTK at initialisation. Over the built-in workloads and the test nets
    this saves about one product in eight, and it costs nothing: it is the Jᵀ u computed while the graph for
    J v is built (``_gauss_newton_product``).

    Args:
        model: the network; its weights, buffers and train/eval mode are left as they were.
        inputs: the probe batch, on the model's device (use ``probe_batch`` for a fixed subset).
        targets: matching targets; G does not depend on them for these losses, they are checked only.
        loss_kind: one of ``LOSS_KINDS``; sets the output Hessian H.
        iters: maximum number of G-vector products (Lanczos steps).
        tol: stop once the relative change of the top Ritz value θ in one step is below ``tol`` (and the
            residual of the Ritz pair below 10·tol·θ, which guards against a stall on a lower eigenvalue).
        mode: "train" (the mode training uses: BatchNorm on batch statistics, dropout on) or "eval".
        seed: seed of the start vector and of the (fixed) dropout masks.
        method: "lanczos", "dense" (form G: only for small models, memory P²) or "auto" (dense when the
            model has at most ``DENSE_MAX_PARAMS`` trainable parameters, else Lanczos). Lanczos takes its
            products in closed form for a Linear/ReLU chain (``linear_chain``), else from autograd; the
            result's ``method`` says which ("dense", "lanczos_chain" or "lanczos").

    Returns:
        A ``CurvatureResult``; ``lr_crit`` is ``inf`` if G is zero on this batch. ``iterations`` counts
        G-vector products (dense: P products in one vectorised call).
    """
    _check(inputs, targets, loss_kind, mode)
    if iters < 1 or tol <= 0:
        raise ValueError(f"need iters >= 1 and tol > 0 ({iters=}, {tol=})")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS} ({method=})")
    m = len(inputs)
    with _probe_mode(model, inputs, mode, seed) as f:
        params = _params(model)
        dense = method == "dense" or (method == "auto" and sum(p.numel() for p in params.values()) <= DENSE_MAX_PARAMS)
        chain = None if dense else LinearChain.capture(model, params, inputs)
        if chain is not None:  # closed-form products, no autograd graph
            h = _output_hessian(chain.outputs, loss_kind, m)
            start = chain.vjp(_start_direction(chain.outputs, h, seed))
            gvp = chain.gauss_newton_product(h)
            lam, converged, it = _lanczos_top(gvp, start, iters, tol)
        else:
            lam, converged, it = _autograd_top(f, params, loss_kind, m, dense, iters, tol, seed)
    used = "dense" if dense else "lanczos" if chain is None else "lanczos_chain"
    lr_crit = 2.0 / lam if lam > 0 else math.inf
    return CurvatureResult(lam, lr_crit, it, m, mode, loss_kind, converged, used)


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


def _autograd_top(
    f: Callable[[Params], torch.Tensor], params: Params, loss_kind: str, m: int, dense: bool, iters: int,
    tol: float, seed: int
) -> tuple[float, bool, int]:
    """(λ0, converged, products) with G-vector products by autograd, for any model."""
    with torch.enable_grad():
        # One flat leaf, the parameters views of it: every product is then a single tensor, not one per layer.
        flat = torch.cat([p.reshape(-1) for p in params.values()]).requires_grad_()
        views = [t.view(p.shape) for t, p in zip(flat.split([p.numel() for p in params.values()]), params.values())]
        out = f(dict(zip(params, views)))  # the one forward pass: dropout masks, BN statistics fixed
        if not out.requires_grad:  # no trainable parameter reaches the output: G = 0
            return 0.0, True, 1
        h = _output_hessian(out.detach(), loss_kind, m)
        if dense:
            gvp, _ = _gauss_newton_product(out, flat, h, torch.zeros_like(out))
            gmat = gvp(torch.eye(flat.numel(), dtype=flat.dtype, device=flat.device)).double()
            return float(torch.linalg.eigvalsh((gmat + gmat.T) / 2)[-1]), True, flat.numel()
        gvp, start = _gauss_newton_product(out, flat, h, _start_direction(out, h, seed))
        return _lanczos_top(gvp, start, iters, tol)


def _check(inputs: torch.Tensor, targets: torch.Tensor, loss_kind: str, mode: str) -> None:
    if loss_kind not in LOSS_KINDS:
        raise ValueError(f"unknown loss kind {loss_kind!r}; one of {LOSS_KINDS}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES} ({mode=})")
    if len(inputs) == 0 or len(inputs) != len(targets):
        raise ValueError(f"need a non-empty batch with one target per input ({len(inputs)=}, {len(targets)=})")


def _params(model: nn.Module) -> Params:
    return {k: p.detach() for k, p in model.named_parameters() if p.requires_grad}


def _gauss_newton_product(
    out: torch.Tensor, flat: torch.Tensor, h: Callable[[torch.Tensor], torch.Tensor], u: torch.Tensor
) -> tuple[Callable[[torch.Tensor], torch.Tensor], torch.Tensor]:
    """(v ↦ G v, Jᵀ u) from the graph of one forward pass ``out = f(flat)``; v is a flat parameter vector or
    a batch of them (the rows of a 2-D tensor), ``h`` applies H/m.

    Jᵀ u is a backward pass through the forward graph. The map u ↦ Jᵀ u is linear, so J v is its transpose:
    the gradient of ⟨Jᵀ u, v⟩ with respect to u, one backward pass through the graph of Jᵀ u that is built
    once with ``create_graph`` (the "double-vjp trick"). That graph does not depend on the value of u, so it
    is built at a useful u, whose Jᵀ u comes for free (the Lanczos start vector). Neither pass repeats the
    forward pass, and both are cheaper than a forward-mode ``jvp``.
    """
    u = u.detach().requires_grad_()
    (jt_u,) = torch.autograd.grad(out, flat, u, create_graph=True)

    def gvp(v: torch.Tensor) -> torch.Tensor:
        if not jt_u.requires_grad:  # Jᵀ u does not depend on u: J = 0
            return torch.zeros_like(v)
        batched = v.dim() == 2
        (jv,) = torch.autograd.grad(jt_u, u, v, retain_graph=True, is_grads_batched=batched)
        (w,) = torch.autograd.grad(out, flat, h(jv), retain_graph=True, is_grads_batched=batched)
        return w

    return gvp, jt_u.detach()


def _start_direction(out: torch.Tensor, h: Callable[[torch.Tensor], torch.Tensor], seed: int) -> torch.Tensor:
    """H u, u = (a random direction in output space, the same for every example) + ``_START_NOISE``·noise.

    Jᵀ H u is the Lanczos start vector: its component along an eigenvector of G scales with the square root
    of the eigenvalue (half a power step) and it has none in G's null space. The noise keeps every
    eigendirection in reach, so Lanczos cannot miss the top one when the shared direction happens to be
    orthogonal to it.
    """
    gen = torch.Generator(device=out.device).manual_seed(seed)
    shared = torch.randn((1, *out.shape[1:]), generator=gen, device=out.device, dtype=out.dtype)
    noise = torch.randn(out.shape, generator=gen, device=out.device, dtype=out.dtype)
    return h(shared + _START_NOISE * noise)


def _lanczos_top(
    gvp: Callable[[torch.Tensor], torch.Tensor], start: torch.Tensor, iters: int, tol: float
) -> tuple[float, bool, int]:
    """(top Ritz value, converged, G-vector products) of symmetric PSD ``gvp`` by restarted Lanczos.

    Each step orthogonalises G q_j against the whole basis by classical Gram-Schmidt, twice ("twice is
    enough"): the float32 basis stays orthonormal, so no spurious copies of λ_max appear. Every
    ``LANCZOS_RESTART`` steps the basis is replaced by the top Ritz vector. Converged: the top Ritz value θ
    moved by ≤ tol·θ in one step of the current cycle and its residual is ≤ ``_RESIDUAL``·tol·θ, or the
    Krylov space became invariant (β ≈ 0: the Ritz values are then eigenvalues).
    """
    norm = float(start.norm())
    if norm == 0.0:  # a start vector Jᵀ H u of zero: J = 0 on this batch (a dead network), so G = 0
        return 0.0, True, 1
    basis = start.new_empty(LANCZOS_RESTART + 1, start.numel())  # rows: the orthonormal Lanczos vectors
    torch.div(start, norm, out=basis[0])
    tri = np.zeros((LANCZOS_RESTART, LANCZOS_RESTART))  # the projected matrix T = Qᵀ G Q of this cycle
    theta, it = 0.0, 0
    while True:
        for j in range(LANCZOS_RESTART):
            it += 1
            w = gvp(basis[j])
            qmat = basis[: j + 1]
            first = torch.mv(qmat, w)  # [.., β_{j-1}, α_j]: the three-term recurrence
            w.addmv_(qmat.T, first, alpha=-1)
            second = torch.mv(qmat, w)  # what round-off left ("twice is enough")
            w.addmv_(qmat.T, second, alpha=-1)
            alpha_j, beta = torch.stack([first[j] + second[j], torch.linalg.vector_norm(w)]).tolist()  # one sync
            tri[j, j] = alpha_j
            evals, evecs = np.linalg.eigh(tri[: j + 1, : j + 1])
            new = float(evals[-1])
            scale = max(abs(new), abs(float(evals[0])))
            if scale == 0.0:  # G q = 0 on the start vector: a dead network or a constant model
                return 0.0, True, it
            residual = beta * abs(float(evecs[-1, -1]))  # ‖G y − θ y‖ of the top Ritz pair (θ, y)
            # A small step alone is not enough: Lanczos can stall on λ2 while the start vector's λ_max part is
            # still tiny (seen on ps10 and a small MLP), with a residual far above tol; hence the guard.
            settled = abs(new - theta) <= tol * abs(new) and residual <= _RESIDUAL * tol * abs(new)
            done = (j > 0 and settled) or beta <= _INVARIANT * scale
            theta = new
            if done:
                return theta, True, it
            if it >= iters:
                return theta, False, it
            if j + 1 < LANCZOS_RESTART:
                tri[j, j + 1] = tri[j + 1, j] = beta
            torch.div(w, beta, out=basis[j + 1])
        # restart from the top Ritz vector (the last basis vector is not part of T's span: drop it)
        top = torch.as_tensor(evecs[:, -1], dtype=basis.dtype, device=basis.device)
        torch.mv(basis[:LANCZOS_RESTART].T, top, out=w)
        torch.div(w, w.norm(), out=basis[0])
        tri[:] = 0.0


def _output_hessian(out: torch.Tensor, loss_kind: str, m: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """u ↦ H u / m applied per example; H is evaluated at ``out`` (it depends on f only for cross-entropy).

    ``u`` has the shape of ``out``, or that shape after leading batch dimensions (a batched product).
    """
    if loss_kind == "half_sum_squares":
        return lambda u: u / m
    if loss_kind == "mse":
        k = out[0].numel()  # MSELoss(mean) averages over all m·k entries: ℓ_α = ‖f_α − y_α‖²/k
        return lambda u: u * (2.0 / (k * m))
    p = torch.softmax(out, dim=1)  # logits (m, C[, ...]); classes on dim 1, as in F.cross_entropy
    classes = 1 - out.dim()  # the same dim counted from the right, so leading batch dims do not move it
    return lambda u: (p * u - p * (p * u).sum(dim=classes, keepdim=True)) / m


def _hessian_blocks(out: torch.Tensor, loss_kind: str) -> list[torch.Tensor]:
    m, k = out.shape
    if loss_kind == "cross_entropy":
        p = torch.softmax(out, dim=1)
        return [torch.diag(pa) - torch.outer(pa, pa) for pa in p]
    scale = 1.0 if loss_kind == "half_sum_squares" else 2.0 / k
    return [scale * torch.eye(k, dtype=out.dtype, device=out.device)] * m


def _sqrt_psd(h: torch.Tensor) -> torch.Tensor:
    evals, evecs = torch.linalg.eigh(h)
    root: torch.Tensor = (evecs * evals.clamp(min=0).sqrt()) @ evecs.T  # (torch types eigh's halves as Any)
    return root


@contextlib.contextmanager
def _probe_mode(
    model: nn.Module, inputs: torch.Tensor, mode: str, seed: int
) -> Iterator[Callable[[Params], torch.Tensor]]:
    """Yield f(params) -> outputs in ``mode``, leaving the model exactly as it was.

    - train/eval mode is set for the probe and restored afterwards;
    - in train mode BatchNorm uses batch statistics but must not update its running stats (an in-place
      update would mutate the model, and fail inside torch.func transforms), so they are detached
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
            out: torch.Tensor = functional_call(model, (params, buffers), (inputs,))  # (typed Any by torch)
            return out

        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            yield f
    finally:
        for mod, saved in stashed:
            for n, t in saved.items():
                setattr(mod, n, t)
        for mod, flag in was_training.items():
            mod.training = flag

