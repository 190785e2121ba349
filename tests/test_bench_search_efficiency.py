"""bench/search_efficiency.py end to end at a tiny size: it runs, and its JSON holds what the issue names."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "search_efficiency.py"
METHODS = ("full", "median", "asha", "top1epoch")  # schedulefree needs the bench extra
SEEDS = 2


@pytest.mark.slow
def test_search_efficiency_smoke(tmp_path: Path) -> None:
    out = tmp_path / "search_efficiency.json"
    command = [sys.executable, str(SCRIPT), "--epochs", "4", "--trials", "4", "--seeds", str(SEEDS),
               "--methods", ",".join(METHODS), "--workers", "1", "--json", str(out)]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "top1epoch: 8 one-epoch evaluations, then the top 2 trained to the end" in done.stdout
    assert f"summary over {SEEDS} seeds" in done.stdout
    assert "schedule_aware" not in done.stdout and "branching" not in done.stdout  # retired

    document = json.loads(out.read_text())
    assert set(document["runs"]) == set(METHODS)
    assert document["naive"] in ("median", "asha")
    for method in METHODS:
        runs = document["runs"][method]
        assert set(runs) == {str(seed) for seed in range(SEEDS)}
        for run in runs.values():
            assert {"epochs_to_target", "seconds_to_target", "final_best"} <= set(run)
            assert run["epochs_spent"] == 16  # the budget, trials x epochs, is spent and never overshot
            if run["epochs_to_target"] is not None:
                assert 0 < run["epochs_to_target"] <= run["epochs_spent"]
                assert run["seconds_to_target"] is not None
    for run in document["runs"]["top1epoch"].values():
        assert (run["top1"]["n"], run["top1"]["k"]) == (8, 2)  # top1_sizes(4, 4)
    assert set(document["summary"]) == set(METHODS)
    for summary in document["summary"].values():
        assert {"ratio_vs_full", "ratio_vs_naive", "final_regret", "misprune_rate"} <= set(summary)
        for ratio in ("ratio_vs_full", "ratio_vs_naive"):
            assert {"median", "ci"} <= set(summary[ratio]) and len(summary[ratio]["ci"]) == 2
    assert document["summary"]["full"]["misprune_rate"] == 0.0
    for method in ("median", "asha", "top1epoch"):
        rate = document["summary"][method]["misprune_rate"]
        assert rate is None or 0.0 <= rate <= 1.0


@pytest.mark.parametrize("retired", ["schedule_aware", "branching"])
def test_retired_methods_are_refused(retired: str, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    """Its argument parsing, in this process (the whole script runs in the slow smoke test above)."""
    if str(SCRIPT.parent) not in sys.path:
        sys.path.append(str(SCRIPT.parent))  # appended: a bench script's name never shadows an installed module
    import search_efficiency

    monkeypatch.setattr(sys, "argv", [str(SCRIPT), "--methods", f"full,{retired}"])
    with pytest.raises(SystemExit) as exited:
        search_efficiency.parse_args()
    assert exited.value.code == 2
    assert f"unknown: ['{retired}']" in capsys.readouterr().err
