"""Regime probes over real HTTP (issue 5): ``/probes``, studies whose LRs are in units of lr_crit, the regimes preset.

(Their validation, which needs no Ray, is in test_api_fast.py.)

A real `phasetune serve` process, real Ray, SQLite and PostgreSQL. The quadratic workload has a known spectrum, so
λ0 must be its ``eig_max`` and lr_crit = 2/eig_max.
"""

from __future__ import annotations

import subprocess
import time

import optuna
import pytest

from tests.conftest import BIN, run_probe, wait_for_status
from tests.factories import small_spec

pytestmark = pytest.mark.slow

EIG_MAX = 4.0
QUADRATIC = {"name": "quadratic", "params": {"dim": 10, "eig_min": 0.1, "eig_max": EIG_MAX, "steps_per_epoch": 5}}

def test_probes_are_run_stored_and_checked(storage_url, server_factory):
    server = server_factory(storage_url)
    with server.client() as client:
        curvature = run_probe(client, {"kind": "curvature", "workload": QUADRATIC, "seed": 3})
        assert curvature["status"] == "done" and curvature["error"] is None, curvature
        assert set(curvature) >= {"id", "kind", "workload", "result", "created_at"}
        result = curvature["result"]
        assert curvature["kind"] == result["kind"] == "curvature"
        assert result["lambda0"] == pytest.approx(EIG_MAX, rel=1e-2)
        assert result["lr_crit"] == pytest.approx(2 / result["lambda0"])
        assert result["iterations"] >= 1 and result["units"] == {"lr_crit": result["lr_crit"]}

        range_test = run_probe(client, {"kind": "lr_range", "workload": QUADRATIC,
                                        "options": {"lr_low": 1e-3, "steps": 400}})
        assert range_test["status"] == "done", range_test
        result = range_test["result"]
        assert result["lr_start"] <= result["lr_best"] <= result["lr_div"]
        assert result["diverged"] and 2 / EIG_MAX < result["lr_div"] <= 2.5 * 2 / EIG_MAX  # brackets 2/λ_max
        assert len(result["lrs"]) == len(result["losses"]) <= 400
        assert range_test["options"]["steps"] == 400 and range_test["id"] != curvature["id"]

        for record in (curvature, range_test):  # stored: GET returns the same record
            got = client.get(f"/probes/{record['id']}")
            assert got.status_code == 200 and got.json() == record
        assert client.get("/probes/987654").status_code == 404


def _quadratic_study(name: str, schedule: dict, **overrides) -> dict:
    return small_spec(name, workload=QUADRATIC, epochs=3, n_trials=2, schedule=schedule,
                      objective={"metric": "train_loss", "direction": "minimize"},
                      sampler={"name": "random", "seed": 0}, **overrides)


def test_a_study_in_units_of_lr_crit_runs_end_to_end(storage_url, server_factory):
    server = server_factory(storage_url)
    schedule = {"family": "constant", "lr": {"low": 0.2, "high": 0.9, "log": True, "unit": "lr_crit"}}
    spec = _quadratic_study("lr-crit-units", schedule)
    with server.client() as client:
        created = client.post("/studies", json=spec)
        assert created.status_code == 201, created.text
        study = wait_for_status(client, created.json()["id"], ("completed", "failed", "stopped"))
    assert study["status"] == "completed", study.get("error")
    assert study["trial_counts"] == {"COMPLETE": 2}

    loaded = optuna.load_study(study_name=spec["name"], storage=storage_url)
    probes = loaded.user_attrs["phasetune:probes"]
    lambda0, lr_crit = probes["curvature"]["lambda0"], probes["curvature"]["lr_crit"]
    assert lambda0 == pytest.approx(EIG_MAX, rel=1e-2) and lr_crit == pytest.approx(2 / lambda0)
    assert loaded.user_attrs["phasetune:units"] == {"lr_crit": lr_crit}
    assert "lr_range" not in probes  # only the probes the schedule needs
    for trial in loaded.trials:
        unit_value = trial.params["lr"]  # Optuna searched the unit value ...
        assert 0.2 <= unit_value <= 0.9
        assert trial.user_attrs["schedule"]["lr"] == pytest.approx(unit_value * lr_crit)  # ... trained with this
        assert trial.user_attrs["lr_units"] == {"lr_crit": lr_crit}
        assert trial.user_attrs["realized_lr"] == pytest.approx([unit_value * lr_crit] * 3, rel=1e-6)


def test_regimes_preset_runs_end_to_end(tmp_path, server_factory):
    storage = f"sqlite:///{tmp_path / 'regimes.db'}"
    server = server_factory(storage)
    spec = small_spec("regimes", workload={"name": "digits", "params": {}}, epochs=3, n_trials=2,
                      schedule={"preset": "regimes", "phase2_momentum": {"choices": [0.9, 0.95]},
                                "transition_epoch": {"low": 1, "high": 2}},
                      sampler={"name": "random", "seed": 0})
    with server.client() as client:
        created = client.post("/studies", json=spec)
        assert created.status_code == 201, created.text
        study = wait_for_status(client, created.json()["id"], ("completed", "failed", "stopped"))
    assert study["status"] == "completed", study.get("error")

    loaded = optuna.load_study(study_name="regimes", storage=storage)
    units = loaded.user_attrs["phasetune:units"]
    lr_crit, lr_div = units["lr_crit"], units["lr_div"]
    assert loaded.user_attrs["phasetune:probes"]["lr_range"]["lr_div"] == lr_div and lr_crit < lr_div
    assert len(loaded.trials) == 2
    for trial in loaded.trials:
        # A large-step trial may diverge (FAIL) on purpose; either way its schedule is recorded.
        assert trial.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL)
        first, second = trial.user_attrs["schedule"]["phases"]
        assert lr_crit * (1 - 1e-9) <= first["lr"] <= lr_div * (1 + 1e-9) and first["momentum"] == 0.0
        assert second["momentum"] in (0.9, 0.95)
        assert second["lr"] / (1 - second["momentum"]) <= lr_crit * (1 + 1e-9)
        assert first["lr"] == pytest.approx(trial.params["phase0.lr"] * lr_crit)
        assert trial.user_attrs["schedule"]["transition_epochs"][0] in (1, 2)
        assert trial.user_attrs["lr_units"] == units


def test_cli_probe_plots_the_range_test(tmp_path, server_factory):
    server = server_factory(f"sqlite:///{tmp_path / 'cli.db'}")
    png = tmp_path / "range.png"
    done = subprocess.run(
        [str(BIN / "phasetune"), "probe", "lr_range", "--workload", "quadratic", "--params", '{"dim": 10}',
         "--options", '{"lr_low": 0.001, "steps": 200}', "--plot", str(png), "--api", server.url],
        capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "lr_div" in done.stdout and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    refused = subprocess.run(
        [str(BIN / "phasetune"), "probe", "lr_range", "--workload", "imagenet", "--api", server.url],
        capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0 and "workload.name" in refused.stderr


def test_a_hundred_slow_probes_leave_the_api_answering(tmp_path, ray_address):
    """Probes that cannot start (a GPU this cluster does not have, admitted because PHASETUNE_WAIT_FOR_NODES says
    one may join) take no request thread: 100 of them answer 202 at once, /health and GET /studies answer beside
    them, and each probe's record says it is running."""
    from tests.conftest import Server

    server = Server(f"sqlite:///{tmp_path / 'probes.db'}", ray_address, tmp_path,
                    PHASETUNE_WAIT_FOR_NODES="true").start()
    body = {"kind": "curvature", "workload": QUADRATIC, "resources": {"cpu": 1, "gpu": 1}}
    try:
        _hundred_probes(server, body)
    finally:
        server.stop()


def _hundred_probes(server, body) -> None:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=20) as pool, server.client() as client:
        answers = list(pool.map(lambda _: client.post("/probes", json=body), range(100)))
        assert [a.status_code for a in answers] == [202] * 100
        started = time.monotonic()
        assert client.get("/health", timeout=5).status_code == 200
        assert client.get("/studies", timeout=5).status_code == 200
        assert time.monotonic() - started < 5
        ids = {a.json()["id"] for a in answers}
        assert len(ids) == 100
        assert all(client.get(f"/probes/{i}").json()["status"] == "running" for i in list(ids)[:5])
