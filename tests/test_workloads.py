"""Contract tests for the built-in workloads (ps10, digits, quadratic)."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from phasetune.search_spaces.errors import SpecError
from phasetune.workers.seeding import Seeds
from phasetune.workers.workloads import (
    LOSS_KINDS,
    Workload,
    build_workload,
    registered,
    resolve,
    steps_per_epoch,
    workloads,
)

# Small params keep every test well under a second; defaults are exercised in the training tests.
SMALL: dict[str, dict[str, Any]] = {
    "ps10": {"n_train": 600, "n_val": 200, "features": 64, "hidden": 32},
    "digits": {},
    "quadratic": {"dim": 8},
}
NAMES = sorted(SMALL)


def _tensors(w: Workload) -> dict[str, torch.Tensor]:
    out = {f"model.{k}": v for k, v in w.model.state_dict().items()}
    out.update({k: getattr(w, k) for k in ("train_x", "train_y", "val_x", "val_y")})
    if "A" in w.extra:
        out["A"] = w.extra["A"]
    return out


def _full_loss(w: Workload) -> float:
    with torch.no_grad():
        return w.loss(w.model(w.train_x), w.train_y).item()


def _train(w: Workload, epochs: int, lr: float, momentum: float, seed: int = 0) -> None:
    """Plain minibatch SGD over shuffled contiguous slices, as the training loop does."""
    opt = torch.optim.SGD(w.model.parameters(), lr=lr, momentum=momentum)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(len(w.train_x), generator=gen)
        for step in range(w.steps_per_epoch):
            batch = order[step * w.batch_size : (step + 1) * w.batch_size]
            loss = w.loss(w.model(w.train_x[batch]), w.train_y[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()


def _val_accuracy(w: Workload) -> float:
    with torch.no_grad():
        return (w.model(w.val_x).argmax(-1) == w.val_y).float().mean().item()


def test_the_built_ins_are_plugins_registered_by_phasetune() -> None:
    for name in NAMES:
        entry = registered()[name]
        assert entry.distribution == "phasetune" and entry.error is None and entry.spec is workloads()[name]
        spec = entry.spec
        assert spec.name == name
        w = build_workload(name, SMALL[name], seed=0)
        assert w.name == name and w.metrics == spec.metrics and w.loss_kind in LOSS_KINDS
        assert list(spec.epoch_metrics())[:2] == ["train_loss", "val_loss"]


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_from_seed(name: str) -> None:
    a, b, c = (_tensors(build_workload(name, SMALL[name], seed)) for seed in (3, 3, 4))
    assert a.keys() == b.keys() == c.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert any(not torch.equal(a[k], c[k]) for k in a if k.startswith("model."))
    assert any(not torch.equal(a[k], c[k]) for k in a if not k.startswith("model."))


@pytest.mark.parametrize("name", NAMES)
def test_data_and_initial_weights_have_seeds_of_their_own(name: str) -> None:
    """A per-trial init (the robustness seed policy) moves the trained weights only; the data stay the study's."""
    base = _tensors(build_workload(name, SMALL[name], Seeds(3, 3, 3)))
    new_init = _tensors(build_workload(name, SMALL[name], Seeds(3, 9, 3)))
    new_data = _tensors(build_workload(name, SMALL[name], Seeds(9, 3, 3)))
    data = [k for k in base if not k.startswith("model.")]
    assert all(torch.equal(base[k], new_init[k]) for k in data)
    assert any(not torch.equal(base[k], new_init[k]) for k in base if k.startswith("model."))
    assert any(not torch.equal(base[k], new_data[k]) for k in data)
    # Seeds.shared(s) is what an int seed means.
    shared = _tensors(build_workload(name, SMALL[name], 3))
    assert all(torch.equal(base[k], shared[k]) for k in base)


@pytest.mark.parametrize("name", NAMES)
def test_steps_per_epoch_come_from_the_params_alone(name: str) -> None:
    for params in (SMALL[name], {}, {"batch_size": 7} if name != "quadratic" else {"steps_per_epoch": 7}):
        assert steps_per_epoch(name, params) == build_workload(name, params, 0).steps_per_epoch


@pytest.mark.parametrize("name", NAMES)
def test_shapes(name: str) -> None:
    w = build_workload(name, SMALL[name], seed=0)
    assert len(w.train_x) == len(w.train_y) and len(w.val_x) == len(w.val_y)
    assert w.steps_per_epoch == math.ceil(len(w.train_x) / w.batch_size)
    out = w.model(w.train_x[:5])
    assert out.shape[0] == 5
    if w.loss_kind == "cross_entropy":
        assert out.shape == (5, 10) and w.train_y.dtype == torch.long
        assert int(w.train_y.min()) >= 0 and int(w.train_y.max()) <= 9
    else:
        assert out.shape == w.train_y[:5].shape


def test_sizes() -> None:
    ps10 = build_workload("ps10", {"n_train": 300, "n_val": 70, "batch_size": 32}, seed=0)
    assert ps10.train_x.shape == (300, 6) and ps10.val_x.shape == (70, 6) and ps10.steps_per_epoch == 10
    digits = build_workload("digits", {"batch_size": 100}, seed=0)
    assert digits.train_x.shape == (1438, 64) and digits.val_x.shape == (359, 64)
    assert digits.steps_per_epoch == 15
    quad = build_workload("quadratic", {"dim": 5, "steps_per_epoch": 7}, seed=0)
    assert quad.steps_per_epoch == 7 and quad.train_y.shape == (7, 5)
    assert list(quad.spec.epoch_metrics()) == ["train_loss", "val_loss"]


@pytest.mark.parametrize(
    ("name", "params", "lr", "momentum", "epochs"),
    [("ps10", {}, 0.1, 0.9, 3), ("digits", {}, 0.1, 0.9, 3), ("quadratic", {}, 1.0, 0.0, 3)],
)
def test_sgd_reduces_training_loss(name: str, params: dict[str, Any], lr: float, momentum: float, epochs: int) -> None:
    torch.manual_seed(0)
    w = build_workload(name, params, seed=0)
    before = _full_loss(w)
    _train(w, epochs, lr, momentum)
    assert _full_loss(w) < 0.7 * before


@pytest.mark.parametrize(("name", "min_accuracy"), [("ps10", 0.45), ("digits", 0.9)])
def test_defaults_learn_within_five_epochs(name: str, min_accuracy: float) -> None:
    w = build_workload(name, {}, seed=1)
    _train(w, 5, lr=0.1, momentum=0.9)
    assert _val_accuracy(w) > min_accuracy  # chance is 0.1


def test_ps10_structure_and_noise() -> None:
    w = build_workload("ps10", {"n_train": 1000, "n_val": 200, "noise": 0.1, "jitter": 0.0}, seed=0)
    subsets = w.extra["subsets"]
    simple, complex_, noise = subsets["simple"], subsets["complex"], subsets["noise"]
    assert int(noise.sum()) == 100
    assert torch.equal(simple.int() + complex_.int() + noise.int(), torch.ones(1000, dtype=torch.int))
    x = w.train_x
    assert torch.all(x[simple, 3:] == 0) and torch.all(x[complex_, :3] == 0)
    in_simple_half = (x[:, 3:] == 0).all(1)
    assert int(in_simple_half.sum()) == 500  # half simple, half complex, noise included
    # Clean examples sit exactly on their class's prototypes (jitter 0); noisy ones on none of them.
    protos = w.extra["prototypes"]
    assert protos["simple"].shape == (10, 10, 3) and protos["complex"].shape == (10, 100, 3)
    for mask, name, cols in ((simple, "simple", slice(0, 3)), (complex_, "complex", slice(3, 6))):
        hits = (x[mask, None, None, cols] == protos[name][None]).all(-1)  # (n, class, pattern)
        assert torch.equal(hits.any(-1).float().argmax(-1), w.train_y[mask])
    all_protos = torch.cat([protos["simple"].reshape(-1, 3), protos["complex"].reshape(-1, 3)])
    noisy_x = torch.where(in_simple_half[noise, None], x[noise, :3], x[noise, 3:])
    assert not (noisy_x[:, None] == all_protos[None]).all(-1).any()
    assert not w.extra["val_subsets"]["noise"].any()


def test_ps10_noise_zero_and_jitter() -> None:
    w = build_workload("ps10", {"n_train": 400, "n_val": 100}, seed=0)
    assert not w.extra["subsets"]["noise"].any()
    simple = w.extra["subsets"]["simple"]
    assert torch.all(w.train_x[simple, 3:] == 0)  # jitter only touches the channels that hold a pattern
    on_proto = (w.train_x[simple, None, :3] == w.extra["prototypes"]["simple"].reshape(1, -1, 3)).all(-1)
    assert not on_proto.any()  # default jitter moves inputs off the exact prototypes


def test_quadratic_is_half_xAx() -> None:
    w = build_workload("quadratic", {"dim": 6, "eig_min": 0.001, "eig_max": 2.0}, seed=5)
    a, x = w.extra["A"], w.model.x.detach()
    expected = torch.logspace(math.log10(0.001), math.log10(2.0), 6)
    torch.testing.assert_close(w.extra["eigenvalues"], expected)
    torch.testing.assert_close(torch.linalg.eigvalsh(a.double()).float(), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(_full_loss(w), 0.5 * float(x @ a @ x), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(w.loss(w.model(w.val_x), w.val_y).item(), _full_loss(w))
    # Gauss-Newton J^T J (per example, H = I) equals A.
    params = dict(w.model.named_parameters())

    def f(p: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.func.functional_call(w.model, p, (w.train_x[:1],))[0]

    jac = torch.func.jacrev(f)(params)["x"]
    torch.testing.assert_close(jac.T @ jac, a, rtol=1e-5, atol=1e-6)
    assert len(params) == 1  # x is the only trainable parameter


def test_quadratic_gd_stability_boundary() -> None:
    w = build_workload("quadratic", {"dim": 10, "eig_max": 1.0}, seed=0)
    start = w.model.x.detach().clone()
    for factor, converges in ((0.95, True), (1.05, False)):
        w.model.x.data.copy_(start)
        _train(w, 30, lr=factor * 2.0, momentum=0.0)
        assert (_full_loss(w) < 1.0) is converges


def test_quadratic_dim_one() -> None:
    w = build_workload("quadratic", {"dim": 1, "eig_min": 0.5, "eig_max": 0.5}, seed=0)
    assert w.extra["eigenvalues"].tolist() == [0.5]


def test_resolve_fills_defaults() -> None:
    spec, full = resolve("ps10", {"noise": 0.1})
    assert spec is workloads()["ps10"] and full == {**spec.defaults, "noise": 0.1}


@pytest.mark.parametrize(
    ("name", "params", "loc"),
    [
        ("nope", {}, ("name",)),
        (None, {}, ("name",)),
        ("ps10", {"lr": 0.1}, ("params", "lr")),
        ("ps10", {"noise": 1.0}, ("params", "noise")),
        ("ps10", {"noise": -0.1}, ("params", "noise")),
        ("ps10", {"noise": "0.1"}, ("params", "noise")),
        ("ps10", {"n_train": 100.5}, ("params", "n_train")),  # 100.0 is 100 (JSON Schema calls it an integer)
        ("ps10", {"n_val": 0}, ("params", "n_val")),
        ("ps10", {"batch_size": 0}, ("params", "batch_size")),
        ("ps10", {"bandwidth": 0.0}, ("params", "bandwidth")),
        ("ps10", {"jitter": float("nan")}, ("params", "jitter")),
        ("digits", {"hidden": True}, ("params", "hidden")),
        ("digits", {"batch_size": -1}, ("params", "batch_size")),
        ("digits", {"val_fraction": 1.0}, ("params", "val_fraction")),
        ("quadratic", {"dim": 0}, ("params", "dim")),
        ("quadratic", {"eig_min": 0.0}, ("params", "eig_min")),
        ("quadratic", {"eig_max": -1.0}, ("params", "eig_max")),
        ("quadratic", {"eig_min": 2.0, "eig_max": 1.0}, ("params", "eig_min")),
        ("quadratic", {"steps_per_epoch": 2.5}, ("params", "steps_per_epoch")),
    ],
)
def test_resolve_rejects(name: Any, params: dict[str, Any], loc: tuple[str, ...]) -> None:
    with pytest.raises(SpecError) as info:
        resolve(name, params)
    assert info.value.loc == loc
