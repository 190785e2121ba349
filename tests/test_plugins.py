"""Your own model: the docs' plugins page (docs/plugins.md) followed word for word, and the example plugin it
installs (its own loss, a metric phasetune does not know) studied over REST on SQLite and PostgreSQL.

The plugin is installed into this test environment and uninstalled when the module ends. A regular install
(not editable) puts it in site-packages, where every process that starts after it, and a running one that has not
read the entry points yet (the registry reads them again for a name it lacks), finds it; the servers here are
started after the install, as the page says to restart them.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import Server, run_probe, wait_for_status

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "phasetune-example-plugin"
DISTRIBUTION = "phasetune-example-plugin"


PLUGINS_PAGE = ROOT / "docs" / "plugins.md"


def _blocks(section: str) -> list[tuple[str, str]]:
    return re.findall(r"```(\w+)\n(.*?)```", section, flags=re.S)


def _run(command: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", command], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**__import__("os").environ, **env})


@pytest.fixture(scope="module")
def uninstall_afterwards():
    yield
    subprocess.run([sys.executable, "-m", "pip", "uninstall", "-y", "-q", DISTRIBUTION], capture_output=True)
    from phasetune.workers.workloads import reload

    reload()


def test_the_docs_walkthrough(tmp_path, ray_address, uninstall_afterwards):
    (toml_lang, toml), (py_lang, module), (sh_lang, shell) = _blocks(PLUGINS_PAGE.read_text())[:3]
    assert (toml_lang, py_lang, sh_lang) == ("toml", "python", "bash")
    # The section shows the example package whole: its files, as they are.
    assert toml == (EXAMPLE / "pyproject.toml").read_text()
    assert module == (EXAMPLE / "phasetune_example.py").read_text()
    install, list_workloads, submit = (line.split("  #")[0].strip() for line in shell.strip().splitlines())

    done = _run(install)
    assert done.returncode == 0, done.stderr
    server = Server(f"sqlite:///{tmp_path / 'plugin.db'}", ray_address, tmp_path).start()  # "then restart"
    try:
        listed = _run(list_workloads, PHASETUNE_API_URL=server.url)
        assert listed.returncode == 0, listed.stderr
        assert "sines  (phasetune-example-plugin 0.1.0)" in listed.stdout and "val_close (max)" in listed.stdout
        submitted = _run(submit, PHASETUNE_API_URL=server.url)
        assert submitted.returncode == 0, submitted.stderr
        assert "completed" in submitted.stdout and "best trial" in submitted.stdout, submitted.stdout
    finally:
        server.stop()


def _study(name: str, **overrides) -> dict:
    import json

    return {**json.loads((EXAMPLE / "study.json").read_text()), "name": name, **overrides}


def test_a_plugin_workload_is_studied_like_a_built_in_one(postgres_url, server_factory, uninstall_afterwards):
    """On PostgreSQL (the docs walkthrough above runs its study on SQLite)."""
    done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", str(EXAMPLE)], capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    server = server_factory(postgres_url)
    with server.client() as client:
        (sines,) = [w for w in client.get("/workloads").json() if w["name"] == "sines"]
        assert sines["distribution"] == DISTRIBUTION and sines["version"] == "0.1.0" and sines["error"] is None
        assert {p["name"]: p["default"] for p in sines["params"]} == {"n": 1000, "hidden": 32, "batch_size": 50}
        assert {m["name"]: m["direction"] for m in sines["metrics"]} == {
            "train_loss": "minimize", "val_loss": "minimize", "val_close": "maximize"}
        assert sines["loss_kind"] is None

        created = client.post("/studies", json=_study("sines"))
        assert created.status_code == 201, created.text
        assert created.json()["spec"]["objective"]["direction"] == "maximize"  # the metric's own
        study = wait_for_status(client, created.json()["id"], ("completed", "failed", "stopped"))
        assert study["status"] == "completed", study.get("error")
        trials = client.get(f"/studies/{created.json()['id']}/trials").json()
        assert [t["state"] for t in trials] == ["COMPLETE"] * 3
        for trial in trials:
            assert [sorted(m) for m in trial["metrics"]][0] == sorted(
                ["epoch", "large_step_phase", "lr", "momentum", "phase", "seconds", "train_loss", "val_loss",
                 "val_close"])
            assert trial["value"] == trial["metrics"][-1]["val_close"] and 0 <= trial["value"] <= 1
        assert study["best_trial"]["value"] == max(t["value"] for t in trials)

        # Its loss is not one the curvature probe knows: lr_crit is refused up front, lr_div is measured.
        refused = client.post("/probes", json={"kind": "curvature", "workload": {"name": "sines"}})
        assert refused.status_code == 422 and refused.json()["detail"][0]["loc"] == ["body", "kind"], refused.text
        units = _study("sines-units", schedule={"family": "constant", "lr": {"low": 0.5, "high": 1, "unit": "lr_crit"}})
        refused = client.post("/studies", json=units)
        assert refused.status_code == 422 and refused.json()["detail"][0]["loc"] == ["body", "schedule"]
        probe = run_probe(client, {"kind": "lr_range", "workload": {"name": "sines"}})
        assert probe["status"] == "done", probe
        assert probe["result"]["loss_kind"] == "custom" and probe["result"]["lr_div"] > 0
