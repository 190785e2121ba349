"""bench/search_efficiency.py end to end at a tiny size: it runs, and its JSON holds what the issue names."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("full", "asha", "schedule_aware", "branching")
SEEDS = 2


@pytest.mark.slow
def test_search_efficiency_smoke(tmp_path: Path) -> None:
    out = tmp_path / "search_efficiency.json"
    command = [sys.executable, str(ROOT / "bench" / "search_efficiency.py"), "--epochs", "4", "--trials", "4",
               "--seeds", str(SEEDS), "--methods", ",".join(METHODS), "--workers", "1", "--json", str(out)]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "goals:" in done.stdout and "schedule_aware vs full:" in done.stdout

    document = json.loads(out.read_text())
    assert set(document["runs"]) == set(METHODS)
    for method in METHODS:
        runs = document["runs"][method]
        assert set(runs) == {str(seed) for seed in range(SEEDS)}
        for run in runs.values():
            assert {"epochs_to_target", "seconds_to_target", "final_best"} <= set(run)
            assert run["epochs_spent"] >= 16  # the budget, trials x epochs, is spent
            if run["epochs_to_target"] is not None:
                assert 0 < run["epochs_to_target"] <= run["epochs_spent"]
                assert run["seconds_to_target"] is not None
    assert set(document["summary"]) == set(METHODS)
    for summary in document["summary"].values():
        assert {"ratio_vs_full", "ratio_vs_naive", "final_regret", "misprune_rate"} <= set(summary)
        for ratio in ("ratio_vs_full", "ratio_vs_naive"):
            assert {"median", "ci"} <= set(summary[ratio]) and len(summary[ratio]["ci"]) == 2
    assert document["summary"]["full"]["misprune_rate"] == 0.0
