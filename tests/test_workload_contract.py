"""The workload contract and the registry, on the built-in plugins: params, the data root, both data paths,
param groups, fashion_mnist's availability. No Ray; the REST side of the same checks is in test_api_fast.py."""

from __future__ import annotations

import os
import threading

import pytest
import torch

from phasetune.search_spaces import PhasedOptimizer, SpecError, build_plan
from phasetune.workers.train import train
from phasetune.workers.workloads import (
    Param,
    TensorSplit,
    build_workload,
    registered,
    resolve,
    steps_per_epoch,
    workloads,
)
from tests.factories import make_image_folder, make_npz

BUILT_IN = {"ps10", "digits", "quadratic", "fashion_mnist", "npz", "image_folder"}


def test_every_built_in_is_a_registered_plugin_of_phasetune():
    entries = registered()
    assert BUILT_IN <= set(entries)
    for name in BUILT_IN:
        assert entries[name].distribution == "phasetune" and entries[name].error is None, entries[name]
    with pytest.raises(SpecError) as err:
        resolve("mycnn", {})
    assert err.value.loc == ("name",) and all(name in err.value.msg for name in BUILT_IN)


@pytest.mark.parametrize(("param", "value", "message"), [
    (Param(3, low=1), 0, "must lie in"),
    (Param(3, low=1), 2.5, "of kind int"),
    (Param(3, low=1), True, "of kind int"),
    (Param(0.5, high=1.0), float("nan"), "finite"),
    (Param(0.5), "0.5", "of kind float"),
    (Param("mlp", choices=("mlp", "cnn")), "rnn", "one of"),
    (Param(False), 1, "of kind bool"),
    (Param(kind="path", required=True), 3, "of kind path"),
])
def test_a_param_refuses_what_it_does_not_take(param: Param, value, message: str):
    with pytest.raises(SpecError, match=message) as err:
        param.check(value, "p")
    assert err.value.loc == ("p",)
    param.check(param.default if param.default is not None else "ok", "p")


@pytest.fixture
def data_root(tmp_path):
    root = tmp_path / "data"
    make_npz(root)
    make_image_folder(root)
    make_image_folder(root, "split_shapes", split=True)
    return root


def test_npz_trains_from_the_data_root(data_root):
    params = {"path": "blobs.npz", "hidden": 16, "batch_size": 32}
    assert steps_per_epoch("npz", params, data_root) == 8  # 240 examples: read from the header, nothing loaded
    w = build_workload("npz", params, 0, data_root)
    history = train(w, build_plan({"family": "constant", "lr": 0.1, "momentum": 0.9}, 3, w.steps_per_epoch), 3)
    assert history[-1]["val_accuracy"] > 0.9 and w.extra["n_classes"] == 3
    _, full = resolve("npz", {"path": "blobs.npz"}, data_root)
    assert full["path"] == "blobs.npz"  # what a study stores: relative to the root


@pytest.mark.parametrize("layout", ["shapes", "split_shapes"])
def test_an_image_folder_trains_from_class_subfolders(data_root, layout):
    params = {"path": layout, "width": 4, "batch_size": 16, "image_size": 12}
    w = build_workload("image_folder", params, 0, data_root)
    assert w.extra["classes"] == ["bottomright", "centre", "topleft"]
    assert steps_per_epoch("image_folder", params, data_root) == w.steps_per_epoch
    history = train(w, build_plan({"family": "constant", "lr": 0.05, "momentum": 0.9}, 4, w.steps_per_epoch), 4)
    assert history[-1]["val_accuracy"] > 0.6


def test_the_dataset_path_trains_like_the_tensor_path(data_root):
    """The same images held as tensors, or read through a DataLoader in the same order: the same curve."""
    schedule = {"family": "phases", "transition_epochs": [1.5],
                "phases": [{"lr": 0.05, "momentum": 0.9}, {"lr": 0.01, "momentum": 0.9, "weight_decay": 1e-3}]}
    curves = []
    for in_memory in (True, False):
        params = {"path": "shapes", "width": 4, "batch_size": 16, "image_size": 12, "in_memory": in_memory}
        w = build_workload("image_folder", params, 0, data_root)
        assert isinstance(w.data.train, TensorSplit) is in_memory
        history = train(w, build_plan(schedule, 3, w.steps_per_epoch), 3, order_seed=4)
        curves.append([h[k] for h in history for k in ("train_loss", "val_loss", "val_accuracy")])
    assert curves[1] == pytest.approx(curves[0], rel=1e-5, abs=1e-6)


def test_paths_outside_the_data_root_are_refused_unopened(data_root, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    fifo = outside / "secret.npz"
    os.mkfifo(fifo)  # opening it would block: a check that opened it would hang this test
    (data_root / "link.npz").symlink_to(fifo)
    (data_root / "linkdir").symlink_to(outside, target_is_directory=True)
    for path in (str(fifo), "../outside/secret.npz", "link.npz", "linkdir/secret.npz", "missing.npz", ""):
        result: list = []
        thread = threading.Thread(target=lambda p=path, out=result: out.append(_refusal(p, data_root)), daemon=True)
        thread.start()
        thread.join(timeout=10)
        assert result, f"checking {path!r} hung: something opened the FIFO outside the root"
        assert result[0] == ("params", "path"), path


def _refusal(path: str, root) -> tuple | None:
    try:
        resolve("npz", {"path": path}, root)
    except SpecError as err:
        return err.loc
    return None


def test_an_image_folder_may_not_link_out_of_itself(data_root, tmp_path):
    folder = make_image_folder(tmp_path / "elsewhere", "other")
    (data_root / "shapes" / "stolen").symlink_to(folder / "topleft", target_is_directory=True)
    with pytest.raises(SpecError) as err:
        resolve("image_folder", {"path": "shapes"}, data_root)
    assert err.value.loc == ("params", "path") and "outside" in err.value.msg


def test_param_groups_scale_the_lr_and_the_weight_decay():
    """A workload's groups keep their multipliers in every phase: no decay on biases, a slower head."""
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    groups = [{"params": [model[0].weight, model[2].weight]},
              {"params": [model[0].bias, model[2].bias], "weight_decay_scale": 0.0, "lr_scale": 0.5}]
    schedule = {"family": "phases", "transition_epochs": [1],
                "phases": [{"lr": 0.1, "weight_decay": 0.01}, {"optimizer": "adam", "lr": 0.02, "weight_decay": 0.1}]}
    driver = PhasedOptimizer(build_plan(schedule, 2, 2), groups)
    seen = []
    for _ in range(4):
        driver.prepare()
        seen.append([(g["lr"], g["weight_decay"]) for g in driver.optimizer.param_groups])
        model(torch.randn(5, 3)).sum().backward()
        driver.step()
    assert seen[0] == [(0.1, 0.01), (0.05, 0.0)]
    assert seen[2] == [(0.02, 0.1), (0.01, 0.0)] and isinstance(driver.optimizer, torch.optim.Adam)


def test_fashion_mnist_names_the_package_when_its_files_are_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("PHASETUNE_FASHION_MNIST_DIR", str(tmp_path))
    with pytest.raises(SpecError) as err:
        resolve("fashion_mnist", {})
    assert err.value.loc == ("name",) and "dataset-fashion-mnist" in err.value.msg


@pytest.mark.skipif(workloads()["fashion_mnist"].unavailable() is not None, reason="dataset-fashion-mnist missing")
def test_fashion_mnist_reads_the_debian_files():
    w = build_workload("fashion_mnist", {"n_train": 256, "n_val": 128, "n_test": 64, "width": 4}, 0)
    assert w.train_x.shape == (256, 1, 28, 28) and w.data.test.x.shape == (64, 1, 28, 28)
    assert set(w.train_y.tolist()) <= set(range(10)) and abs(float(w.train_x.mean())) < 0.3
    history = train(w, build_plan({"family": "constant", "lr": 0.05, "momentum": 0.9}, 2, w.steps_per_epoch), 2)
    assert set(history[-1]) >= {"val_accuracy", "test_accuracy", "test_loss"} and "test_loss" not in history[0]
    with pytest.raises(SpecError) as err:
        resolve("fashion_mnist", {"n_train": 50_000, "n_val": 20_000})
    assert err.value.loc == ("params", "n_val")


def test_hostile_values_are_spec_errors_not_crashes(data_root):
    for value in (10**400, -(10**400)):
        with pytest.raises(SpecError):
            Param(3, low=1).check(value, "p")
    with pytest.raises(SpecError):  # a default that breaks its own rule is the plugin's bug, caught at declaration
        Param(0, low=1)
    (data_root / "loop").symlink_to(data_root / "loop")
    for path in ("a\x00b", "x" * 300, "loop", "C:\\Windows\\win.ini", "c:relative"):
        with pytest.raises(SpecError) as err:
            resolve("npz", {"path": path}, data_root)
        assert err.value.loc == ("params", "path"), path


def test_an_image_folder_is_checked_before_it_is_listed(data_root, tmp_path):
    outside = make_image_folder(tmp_path / "elsewhere", "secret_name", split=True)
    folder = data_root / "linked"
    folder.mkdir()
    (folder / "train").symlink_to(outside / "train", target_is_directory=True)
    (folder / "val").symlink_to(outside / "val", target_is_directory=True)
    with pytest.raises(SpecError) as err:
        resolve("image_folder", {"path": "linked"}, data_root)
    assert err.value.loc == ("params", "path") and "secret_name" not in err.value.msg and "topleft" not in err.value.msg
    # On the Dataset path, a file swapped for a symlink out after the listing is not read either.
    w = build_workload("image_folder", {"path": "shapes", "in_memory": False, "image_size": 12}, 0, data_root)
    victim = w.data.train.items[0][0]
    victim.unlink()
    victim.symlink_to(next((outside / "train" / "topleft").iterdir()))
    with pytest.raises(PermissionError):
        w.data.train[0]


@pytest.mark.parametrize("bad", ["y_column", "negative", "float_labels", "empty"])
def test_npz_contents_are_checked_at_submission(data_root, bad):
    import numpy as np

    x, y = np.zeros((10, 4), np.float32), np.arange(10) % 2
    arrays = {"x_train": x, "y_train": y, "x_val": x, "y_val": y}
    if bad == "y_column":
        arrays["y_train"] = y[:, None]
    elif bad == "negative":
        arrays["y_val"] = y - 1
    elif bad == "float_labels":
        arrays["y_val"] = y.astype(np.float32)
    else:
        arrays["x_train"], arrays["y_train"] = x[:0], y[:0]
    np.savez(data_root / "bad.npz", **arrays)
    with pytest.raises(SpecError) as err:
        resolve("npz", {"path": "bad.npz"}, data_root)
    assert err.value.loc == ("params", "path")


def test_both_data_paths_probe_the_same_examples(data_root):
    params = {"path": "shapes", "image_size": 12}
    tensors = build_workload("image_folder", {**params, "in_memory": True}, 0, data_root)
    files = build_workload("image_folder", {**params, "in_memory": False}, 0, data_root)
    for k in (10, 1000):
        (xa, ya), (xb, yb) = tensors.sample(tensors.data.train, k, 3), files.sample(files.data.train, k, 3)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_what_a_workload_gives_is_checked_against_its_declaration():
    from torch import nn

    from phasetune.workers.workloads import ACCURACY, Data, Metric, WorkloadSpec
    from phasetune.workers.workloads.registry import _check_data, _check_groups

    def spec(**kw) -> WorkloadSpec:
        base = dict(name="t", params={"batch_size": Param(4, low=1)}, data=lambda p, s: None,
                    model=lambda p, d: nn.Linear(2, 2), train_size=lambda p: 8)
        return WorkloadSpec(**{**base, **kw})

    assert spec().loss_kind == "cross_entropy" and spec(loss=nn.functional.mse_loss).loss_kind == "mse"
    assert spec(loss=nn.functional.smooth_l1_loss).loss_kind is None  # not one the curvature probe knows
    with pytest.raises(ValueError, match="batch_size"):
        spec(params={})
    split = TensorSplit(torch.zeros(6, 2), torch.zeros(6, dtype=torch.long))
    with pytest.raises(ValueError, match="train_size says 8"):
        _check_data(spec(), {}, Data(train=split, val=split))
    model = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="exactly once"):
        _check_groups("t", model, [{"params": [model.weight]}])
    w = build_workload("digits", {"hidden": 4}, 0)
    w.spec = spec(metrics={"accuracy": ACCURACY, "mean": Metric(lambda out, y: (out.argmax(-1) == y).float().mean(),
                                                                 True)})
    with pytest.raises(ValueError, match="one value per example"):
        w.evaluate(w.data.val, "val")
