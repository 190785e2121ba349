"""Regime probes (spec §1.7, §4, claims C1, C3, C6): curvature probe and LR range test.

Throughout, c = η·λ0 is the spec's dimensionless LR, so η = (c/2)·lr_crit: c = 2 is the edge of stability.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator

import pytest
import torch
from torch import nn
from torch.func import functional_call, hessian, jacrev

from phasetune.search_spaces.probes import (
    CurvatureResult,
    LRRangeResult,
    estimate_curvature,
    exact_curvature,
    lr_range_test,
    probe_batch,
    probe_units,
    result_to_dict,
)
from phasetune.search_spaces.probes.curvature import DENSE_MAX_PARAMS, _gauss_newton_product, _output_hessian
from phasetune.search_spaces.probes.linear_chain import LinearChain
from phasetune.search_spaces.probes.lr_range import _loss_fn

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Tiny ops on a shared 2-core box: intra-op threads only add contention (10-100x slower here)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------------------------------ models


class Quadratic(nn.Module):
    """f = A^{1/2} x for every example: with zero targets and half_sum_squares, L = ½xᵀAx and G = A."""

    def __init__(self, a: torch.Tensor, gen: torch.Generator) -> None:
        super().__init__()
        evals, evecs = torch.linalg.eigh(a.double())
        self.register_buffer("root", ((evecs * evals.sqrt()) @ evecs.T).float())
        self.x = nn.Parameter(torch.randn(a.shape[0], generator=gen))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return (self.root @ self.x).expand(len(inputs), -1)


def spd(dim: int, eig_min: float, eig_max: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A random SPD matrix with log-spaced eigenvalues (C1 setup) and its top eigenvector."""
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=gen, dtype=torch.float64))
    eigs = torch.logspace(math.log10(eig_min), math.log10(eig_max), dim, dtype=torch.float64)
    return ((q * eigs) @ q.T).float(), q[:, -1].float()


class TwoLayer(nn.Module):
    """NTK parameterisation f = vᵀ relu(Wx/√d)/√n with W, v ~ N(0, 1) (spec §4 Q3)."""

    def __init__(self, d: int, n: int, seed: int) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.w = nn.Parameter(torch.randn(n, d, generator=gen))
        self.v = nn.Parameter(torch.randn(n, 1, generator=gen))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, d = self.w.shape
        return torch.relu(x @ self.w.T / math.sqrt(d)) @ self.v / math.sqrt(n)


def ntk_data(seed: int, m: int = 32, d: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Centred Gaussian inputs with ‖x‖² = d and ±1 labels."""
    gen = torch.Generator().manual_seed(1000 + seed)
    x = torch.randn(m, d, generator=gen)
    x = x - x.mean(0)
    x = x / x.norm(dim=1, keepdim=True) * math.sqrt(d)
    y = (torch.randint(0, 2, (m, 1), generator=gen) * 2 - 1).float()
    return x, y


def blobs(n: int = 256, dim: int = 8, classes: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    centres = 2 * torch.randn(classes, dim, generator=gen)
    y = torch.randint(0, classes, (n,), generator=gen)
    return centres[y] + torch.randn(n, dim, generator=gen), y


def mlp(sizes: list[int], seed: int, extra: Callable[[int], list[nn.Module]] | None = None) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        if i:
            layers += (extra(a) if extra else []) + [nn.Tanh()]
        layers.append(nn.Linear(a, b))
    return nn.Sequential(*layers)


def gd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: LossFn, lr: float, steps: int) -> list[float]:
    """Full-batch GD; returns the loss before every step."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        value = loss(model(x), y)
        losses.append(value.item())
        if not math.isfinite(losses[-1]):
            break
        value.backward()
        opt.step()
    return losses


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_state(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert after.keys() == before.keys()
    for k, v in before.items():
        assert torch.equal(after[k], v), k


# ------------------------------------------------------------------------------ curvature: Q1 / C1


def test_quadratic_probe_finds_top_eigenvalue_and_the_gd_stability_edge() -> None:
    a, top = spd(50, 1e-3, 3.0, seed=0)
    model = Quadratic(a, torch.Generator().manual_seed(1))
    inputs, targets = torch.zeros(1, 1), torch.zeros(1, 50)
    res = estimate_curvature(model, inputs, targets, "half_sum_squares")
    assert res.converged and res.lambda0 == pytest.approx(3.0, rel=1e-2)
    assert res.lr_crit == pytest.approx(2 / res.lambda0)
    loss = _loss_fn("half_sum_squares")
    x0 = model.x.detach().clone()

    below = gd(model, inputs, targets, loss, 0.95 * res.lr_crit, 300)
    assert all(b <= a_ * (1 + 1e-6) for a_, b in zip(below, below[1:]))  # monotone: every mode contracts
    assert abs(float(top @ model.x.detach())) < 1e-3 * abs(float(top @ x0))  # top mode: factor 0.9 per step

    with torch.no_grad():
        model.x.copy_(x0)
    above = gd(model, inputs, targets, loss, 1.05 * res.lr_crit, 300)
    assert above[-1] > 1e6 * above[0]  # top mode: factor 1.1 per step


def test_quadratic_workload_probe_matches_its_spectrum() -> None:
    workloads = pytest.importorskip("phasetune.workers.workloads")
    w = workloads.build_workload("quadratic", {"dim": 30}, seed=0)
    x, y = probe_batch(w.train_x, w.train_y)
    res = estimate_curvature(w.model, x, y, w.loss_kind)
    eig_max = float(w.extra["eigenvalues"][-1])
    assert res.lambda0 == pytest.approx(eig_max, rel=1e-2)
    assert exact_curvature(w.model, x, y, w.loss_kind) == pytest.approx(eig_max, rel=1e-4)
    below = gd(w.model, x, y, w.loss, 0.95 * res.lr_crit, 200)
    assert below[-1] < below[0]
    with torch.no_grad():
        w.model.x.copy_(torch.ones_like(w.model.x))
    above = gd(w.model, x, y, w.loss, 1.05 * res.lr_crit, 300)
    assert above[-1] > 1e6 * above[0]


def test_lanczos_resolves_close_top_eigenvalues() -> None:
    """A cluster at the top (1, 0.97, 0.95, 0.93) is the hard case for power iteration: its Rayleigh quotient
    gains ~3% a step there, so its |Δλ|/λ < 1e-3 test stops percents short of λ_max. Lanczos must not."""
    dim = 200
    gen = torch.Generator().manual_seed(7)
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=gen, dtype=torch.float64))
    eigs = torch.cat([torch.logspace(-2, math.log10(0.9), dim - 4, dtype=torch.float64),
                      torch.tensor([0.93, 0.95, 0.97, 1.0], dtype=torch.float64)])
    a = ((q * eigs) @ q.T).float()
    model = Quadratic(a, torch.Generator().manual_seed(1))
    inputs, targets = torch.zeros(1, 1), torch.zeros(1, dim)
    assert exact_curvature(model, inputs, targets, "half_sum_squares") == pytest.approx(1.0, rel=1e-4)
    for seed in range(3):
        res = estimate_curvature(model, inputs, targets, "half_sum_squares", seed=seed)
        assert res.converged and res.iterations <= 50
        assert res.lambda0 == pytest.approx(1.0, rel=1e-2)
        assert res.lambda0 <= 1.0 + 1e-4  # a Ritz value never exceeds λ_max (up to float32 round-off)


def test_probe_does_not_stop_on_a_lower_eigenvalue() -> None:
    """Some start vectors hold little of the top eigenvector: Lanczos first settles on λ2 (here start seed 3
    stalls at 0.64·λ_max with |Δλ|/λ < 1e-3 for a step), and only the residual guard keeps it going."""
    x, labels = blobs(n=24, dim=5, classes=4, seed=3)
    model = mlp([5, 12, 4], seed=0)
    exact = exact_curvature(model, x, labels, "cross_entropy")
    for seed in range(8):
        res = estimate_curvature(model, x, labels, "cross_entropy", seed=seed)
        assert res.converged and res.lambda0 == pytest.approx(exact, rel=1e-2), seed


# -------------------------------------------------------------------------- curvature: Q3 / C3, C6


@pytest.mark.parametrize("loss_kind", ["mse", "half_sum_squares"])
def test_wide_relu_probe_matches_exact_ntk_eigenvalue(loss_kind: str) -> None:
    x, y = ntk_data(0)
    model = TwoLayer(16, 2048, seed=0)
    res = estimate_curvature(model, x, y, loss_kind)
    exact = exact_curvature(model, x, y, loss_kind)
    assert res.converged and res.iterations <= 50
    assert res.lambda0 == pytest.approx(exact, rel=1e-2)
    # MSELoss(mean) with k = 1 is twice ½‖·‖²: H = 2, so λ doubles and lr_crit halves (normalisation rule).
    other = "half_sum_squares" if loss_kind == "mse" else "mse"
    scale = 2.0 if loss_kind == "mse" else 0.5
    assert exact == pytest.approx(scale * exact_curvature(model, x, y, other), rel=1e-6)


@pytest.mark.parametrize(("seed", "loss_kind"), [(0, "mse"), (1, "half_sum_squares"), (2, "mse")])
def test_catapult_above_lr_crit_and_lazy_below(seed: int, loss_kind: str) -> None:
    x, y = ntk_data(seed)
    loss = _loss_fn(loss_kind)
    lam0 = estimate_curvature(TwoLayer(16, 2048, seed), x, y, loss_kind).lambda0

    # c = 3 (η = 1.5·lr_crit): the loss is catapulted up early, then converges to a flatter region.
    model = TwoLayer(16, 2048, seed)
    lr = 3.0 / lam0
    losses = gd(model, x, y, loss, lr, 300)
    peak = max(range(len(losses)), key=losses.__getitem__)
    assert losses[peak] >= 5 * losses[0] and peak <= 12
    assert losses[-1] < 1e-3 * losses[0]
    lam_final = estimate_curvature(model, x, y, loss_kind).lambda0
    assert lam_final < 2 / lr

    # c = 1 (η = 0.5·lr_crit): lazy regime, no rise and the curvature barely moves.
    model = TwoLayer(16, 2048, seed)
    lr = 1.0 / lam0
    losses = gd(model, x, y, loss, lr, 300)
    assert max(losses) <= losses[0] and losses[-1] < 1e-3 * losses[0]
    lam_final = estimate_curvature(model, x, y, loss_kind).lambda0
    assert abs(lam_final / lam0 - 1) < 0.05


# ------------------------------------------------------------------ curvature: other losses, modes


def brute_force_g(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_kind: str) -> float:
    """λ_max(Jᵀ (∂²L/∂f²) J) in parameter space, H from autograd: independent of the probe's H formulas."""
    params = {k: p.detach() for k, p in model.named_parameters()}
    out = functional_call(model, params, (x,)).detach()
    jac = jacrev(lambda p: functional_call(model, p, (x,)))(params)
    j = torch.cat([t.reshape(out.numel(), -1) for t in jac.values()], dim=1).double()
    loss = _loss_fn(loss_kind)
    h_out = hessian(lambda f: loss(f.reshape(out.shape), y))(out.reshape(-1)).double()  # (mk, mk), has 1/m
    return float(torch.linalg.eigvalsh(j.T @ h_out @ j).max())


@pytest.mark.parametrize("loss_kind", ["cross_entropy", "mse"])
def test_small_mlp_probe_matches_oracles(loss_kind: str) -> None:
    x, labels = blobs(n=24, dim=5, classes=4, seed=3)
    y = labels if loss_kind == "cross_entropy" else torch.randn(24, 4)  # mse with k = 4: H = (2/4)·I
    model = mlp([5, 12, 4], seed=0)
    exact = exact_curvature(model, x, y, loss_kind)
    assert exact == pytest.approx(brute_force_g(model, x, y, loss_kind), rel=1e-6)
    res = estimate_curvature(model, x, y, loss_kind, iters=200)
    assert res.lambda0 == pytest.approx(exact, rel=1e-2)
    assert (res.loss_kind, res.batch_size, res.mode) == (loss_kind, 24, "train")


def test_batchnorm_and_dropout_modes_leave_the_model_untouched() -> None:
    x, y = blobs(n=32, dim=6, classes=3, seed=1)
    model = mlp([6, 16, 3], seed=0, extra=lambda w: [nn.BatchNorm1d(w), nn.Dropout(0.2)])
    model[1].running_mean.fill_(0.3)  # running stats != batch stats, so the two modes differ
    model.eval()
    before, rng = snapshot(model), torch.get_rng_state()
    values = {}
    for mode in ("train", "eval"):
        res = estimate_curvature(model, x, y, "cross_entropy", mode=mode, iters=300, tol=1e-6)
        assert res.mode == mode
        values[mode] = res.lambda0
        assert res.lambda0 == pytest.approx(exact_curvature(model, x, y, "cross_entropy", mode=mode), rel=1e-2)
        assert not model.training and not any(m.training for m in model.modules())
        assert_same_state(model, before)  # BatchNorm running stats not updated, even in train mode
        assert torch.equal(rng, torch.get_rng_state())
    assert values["train"] != pytest.approx(values["eval"], rel=1e-3)


def test_probe_rejects_bad_arguments() -> None:
    model, x, y = mlp([2, 3], seed=0), torch.zeros(4, 2), torch.zeros(4, dtype=torch.long)
    for kwargs in ({"loss_kind": "hinge"}, {"loss_kind": "mse", "mode": "test"}, {"loss_kind": "mse", "iters": 0},
                   {"loss_kind": "mse", "method": "power"}):
        with pytest.raises(ValueError):
            estimate_curvature(model, x, y, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        estimate_curvature(model, x, y[:3], "cross_entropy")


def test_probe_batch_is_a_fixed_subset() -> None:
    x, y = torch.arange(1000.0).unsqueeze(1), torch.arange(1000)
    bx, by = probe_batch(x, y, max_examples=256, seed=5)
    assert len(bx) == 256 and torch.equal(bx[:, 0].long(), by) and len(set(by.tolist())) == 256
    assert torch.equal(probe_batch(x, y, max_examples=256, seed=5)[1], by)
    assert not torch.equal(probe_batch(x, y, max_examples=256, seed=6)[1], by)
    small_x, small_y = probe_batch(x[:100], y[:100], max_examples=256)
    assert torch.equal(small_x, x[:100]) and torch.equal(small_y, y[:100])  # all of a small set


def test_digits_workload_probe_matches_oracle() -> None:
    workloads = pytest.importorskip("phasetune.workers.workloads")
    w = workloads.build_workload("digits", None, seed=0)
    x, y = probe_batch(w.train_x, w.train_y, max_examples=64)
    res = estimate_curvature(w.model, x, y, w.loss_kind, iters=100, tol=1e-4)
    assert res.lambda0 == pytest.approx(exact_curvature(w.model, x, y, w.loss_kind), rel=1e-2)


# ------------------------------------------------------- curvature: how the products are computed


class FixedFeatures(nn.Module):
    """A parameter-free prefix, like ps10's random Fourier features."""

    def __init__(self, dim: int, n: int) -> None:
        super().__init__()
        self.register_buffer("proj", torch.randn(n, dim, generator=torch.Generator().manual_seed(3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cos(x @ self.proj.T)


def relu_chain(seed: int) -> nn.Sequential:
    """Every shape the closed-form path accepts: a prefix, nested Sequentials, no bias, Identity, a final ReLU."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Flatten(), FixedFeatures(6, 20),
        nn.Sequential(nn.Linear(20, 16), nn.ReLU(inplace=True), nn.Identity()),
        nn.Linear(16, 12, bias=False), nn.ReLU(),
        nn.Sequential(nn.Linear(12, 4)), nn.ReLU(),
    )


def autograd_products(model: nn.Module, x: torch.Tensor, loss_kind: str) -> Callable[[torch.Tensor], torch.Tensor]:
    params = {k: p.detach() for k, p in model.named_parameters()}
    flat = torch.cat([p.reshape(-1) for p in params.values()]).requires_grad_()
    views = [t.view(p.shape) for t, p in zip(flat.split([p.numel() for p in params.values()]), params.values())]
    with torch.enable_grad():
        out = functional_call(model, dict(zip(params, views)), (x,))
    gvp, _ = _gauss_newton_product(out, flat, _output_hessian(out.detach(), loss_kind, len(x)), torch.zeros_like(out))
    return gvp


@pytest.mark.parametrize("loss_kind", ["cross_entropy", "mse"])
def test_linear_chain_products_equal_autograd(loss_kind: str) -> None:
    """The closed-form J v and Jᵀ u of a Linear/ReLU chain are the autograd products, to float32 round-off."""
    model = relu_chain(seed=0)
    x = torch.randn(32, 2, 3, generator=torch.Generator().manual_seed(1))  # Flatten makes it (32, 6)
    y = torch.randint(0, 4, (32,)) if loss_kind == "cross_entropy" else torch.randn(32, 4)
    params = {k: p.detach() for k, p in model.named_parameters()}
    chain = LinearChain.capture(model, params, x)
    assert chain is not None and len(chain.layers) == 3
    assert torch.allclose(chain.outputs, model(x).detach(), atol=1e-6)
    gvp = chain.gauss_newton_product(_output_hessian(chain.outputs, loss_kind, len(x)))
    reference = autograd_products(model, x, loss_kind)
    gen = torch.Generator().manual_seed(2)
    for _ in range(3):
        v = torch.randn(sum(p.numel() for p in params.values()), generator=gen)
        assert torch.allclose(gvp(v), reference(v), rtol=1e-4, atol=1e-6)
    res = estimate_curvature(model, x, y, loss_kind)
    assert res.method == "lanczos_chain" and res.converged
    assert res.lambda0 == pytest.approx(exact_curvature(model, x, y, loss_kind), rel=1e-2)


def test_other_models_take_the_autograd_products() -> None:
    x, y = blobs(n=32, dim=6, classes=3, seed=1)
    torch.manual_seed(0)
    frozen = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    frozen[0].bias.requires_grad_(False)
    shared = nn.Linear(6, 6)
    models = {
        "tanh": mlp([6, 16, 3], seed=0),
        "batchnorm": nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3)),
        "frozen bias": frozen,
        "shared layer": nn.Sequential(shared, nn.ReLU(), shared, nn.ReLU(),
                                      nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 3)),
        "relu twice": nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.ReLU(), nn.Linear(16, 3)),
    }
    for name, model in models.items():
        params = {k: p.detach() for k, p in model.named_parameters() if p.requires_grad}
        assert LinearChain.capture(model, params, x) is None, name
        res = estimate_curvature(model, x, y, "cross_entropy")
        assert res.method == "lanczos", name
        assert res.lambda0 == pytest.approx(exact_curvature(model, x, y, "cross_entropy"), rel=1e-2), name


def test_small_models_get_the_dense_matrix() -> None:
    """Up to DENSE_MAX_PARAMS parameters G is formed whole: λ0 is exact, and Lanczos agrees with it."""
    a, _ = spd(30, 1e-2, 2.5, seed=4)
    model = Quadratic(a, torch.Generator().manual_seed(1))
    inputs, targets = torch.zeros(1, 1), torch.zeros(1, 30)
    dense = estimate_curvature(model, inputs, targets, "half_sum_squares")
    assert 30 <= DENSE_MAX_PARAMS and dense.method == "dense" and dense.iterations == 30
    assert dense.lambda0 == pytest.approx(2.5, rel=1e-5)
    lanczos = estimate_curvature(model, inputs, targets, "half_sum_squares", method="lanczos")
    assert lanczos.method == "lanczos" and lanczos.lambda0 == pytest.approx(2.5, rel=1e-2)
    x, y = blobs(n=64, dim=6, classes=3, seed=1)
    bigger = mlp([6, 16, 3], seed=0)  # 163 parameters: Lanczos by default, dense on request
    assert estimate_curvature(bigger, x, y, "cross_entropy").method == "lanczos"
    forced = estimate_curvature(bigger, x, y, "cross_entropy", method="dense")
    assert forced.method == "dense"
    assert forced.lambda0 == pytest.approx(exact_curvature(bigger, x, y, "cross_entropy"), rel=1e-5)


# ---------------------------------------------------------------------------- LR range test (§1.7)


def test_range_test_on_quadratic_brackets_two_over_lambda_max() -> None:
    """η_div > 2/λ_max is a theorem: below it GD on a quadratic is monotone, so the smoothed loss never rises.

    The overshoot above 2/λ_max is lag (the top mode was annihilated near η = 1/λ_max and must regrow,
    then the EMA must catch up), so it shrinks with the ramp's resolution: 1.5× at 1000 steps of 0.9%,
    while the default 100-step ramp over 8 decades (20% per step) does not see the divergence before η = 10.
    """
    a, _ = spd(50, 1e-3, 1.0, seed=0)
    model = Quadratic(a, torch.Generator().manual_seed(1))
    inputs, targets = torch.zeros(1, 1), torch.zeros(1, 50)
    model.x.grad = torch.full_like(model.x, 7.0)
    x_param, before = model.x, snapshot(model)
    crit = 2 / 1.0

    res = lr_range_test(model, inputs, targets, "half_sum_squares", lr_low=1e-3, lr_high=10, steps=1000)
    assert res.diverged and crit < res.lr_div <= 2.5 * crit
    assert res.lr_start <= res.lr_best <= res.lr_div
    rising = [i for i in range(1, len(res.losses)) if res.losses[i] > res.losses[i - 1]]
    assert res.lrs[rising[0] - 1] > crit  # first rise of the curve only after a step above 2/λ_max
    # exactly restored: same Parameter object, same values, same .grad
    assert model.x is x_param and torch.equal(model.x.grad, torch.full_like(model.x, 7.0))
    assert_same_state(model, before)

    coarse = lr_range_test(model, inputs, targets, "half_sum_squares")  # defaults: 1e-7 → 10, 100 steps
    assert coarse.lr_div > crit and len(coarse.lrs) <= 100
    assert_same_state(model, before)


@pytest.mark.parametrize(("optimizer", "batch_size"), [("sgd", 32), ("sgd", None), ("adam", 32)])
def test_range_test_on_classifier_orders_the_three_lrs_and_restores_everything(
    optimizer: str, batch_size: int | None
) -> None:
    x, y = blobs(n=256, dim=8, classes=3, seed=0)
    model = mlp([8, 32, 3], seed=0, extra=lambda w: [nn.BatchNorm1d(w), nn.Dropout(0.1)])
    model.eval()
    before, rng = snapshot(model), torch.get_rng_state()
    params = list(model.parameters())
    res = lr_range_test(model, x, y, "cross_entropy", batch_size=batch_size, optimizer=optimizer)
    assert res.lr_start <= res.lr_best <= res.lr_div
    assert res.lr_start < res.lr_best  # the loss does fall on this problem
    assert res.lrs[0] == pytest.approx(1e-7) and len(res.lrs) == len(res.losses) <= 100
    ratios = [b / a for a, b in zip(res.lrs, res.lrs[1:])]
    assert max(ratios) == pytest.approx(min(ratios), rel=1e-9)  # geometric ramp
    assert min(res.losses) < 0.8 * res.losses[0]
    assert_same_state(model, before)  # weights and BatchNorm running stats
    assert list(model.parameters()) == params and all(p.grad is None for p in params)
    assert not model.training and torch.equal(rng, torch.get_rng_state())


def test_range_test_rejects_bad_arguments() -> None:
    model, x, y = mlp([2, 3], seed=0), torch.zeros(4, 2), torch.zeros(4, dtype=torch.long)
    bad = [{"lr_low": 1.0, "lr_high": 0.1}, {"steps": 1}, {"optimizer": "lbfgs"},
           {"optimizer": "adam", "momentum": 0.9}, {"batch_size": 0}]
    for kwargs in bad:
        with pytest.raises(ValueError):
            lr_range_test(model, x, y, "cross_entropy", **kwargs)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------- REST helpers


def test_results_are_json_ready_and_give_units() -> None:
    x, y = blobs(n=64, dim=4, classes=2, seed=2)
    model = mlp([4, 8, 2], seed=0)
    curv = estimate_curvature(model, x, y, "cross_entropy")
    rng = lr_range_test(model, x, y, "cross_entropy", lr_high=1e4, steps=60)
    for res, kind in ((curv, "curvature"), (rng, "lr_range")):
        d = result_to_dict(res)
        assert d["kind"] == kind
        json.dumps(d, allow_nan=False)
    assert result_to_dict(curv)["lr_crit"] == curv.lr_crit
    nan_curve = LRRangeResult(1e-3, 1e-2, 1.0, True, [1e-3, 1e-2, 1.0], [1.0, 0.5, math.nan], "mse", "sgd", 0.0, 8)
    assert result_to_dict(nan_curve)["losses"] == [1.0, 0.5, None]
    flat = CurvatureResult(0.0, math.inf, 1, 8, "train", "mse", True)
    assert result_to_dict(flat)["lr_crit"] is None
    assert probe_units(curv, rng) == {"lr_crit": curv.lr_crit, "lr_div": rng.lr_div}
    assert probe_units(flat, None) == {}
    with pytest.raises(TypeError):
        result_to_dict({"lambda0": 1.0})  # type: ignore[arg-type]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_probes_run_on_the_tensors_device() -> None:
    x, y = blobs(n=64, dim=6, classes=3, seed=4)
    model = mlp([6, 16, 3], seed=0, extra=lambda w: [nn.BatchNorm1d(w)])
    cpu = estimate_curvature(model, x, y, "cross_entropy", iters=200, tol=1e-6)
    gpu_model = model.cuda()
    before = snapshot(gpu_model)
    gpu = estimate_curvature(gpu_model, x.cuda(), y.cuda(), "cross_entropy", iters=200, tol=1e-6)
    assert gpu.lambda0 == pytest.approx(cpu.lambda0, rel=1e-3)
    chain, xs = relu_chain(seed=0), torch.randn(32, 6, generator=torch.Generator().manual_seed(1))
    ys = torch.randint(0, 4, (32,))
    on_cpu = estimate_curvature(chain, xs, ys, "cross_entropy", tol=1e-6, iters=200)
    on_gpu = estimate_curvature(chain.cuda(), xs.cuda(), ys.cuda(), "cross_entropy", tol=1e-6, iters=200)
    assert on_gpu.method == on_cpu.method == "lanczos_chain"
    assert on_gpu.lambda0 == pytest.approx(on_cpu.lambda0, rel=1e-3)
    res = lr_range_test(gpu_model, x.cuda(), y.cuda(), "cross_entropy", batch_size=16)
    assert res.lr_start <= res.lr_best <= res.lr_div
    assert_same_state(gpu_model, before)
