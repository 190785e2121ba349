"""The CLI as a script sees it: exit codes, ``--json`` on stdout unchanged, status lines on stderr, no traceback for
a user's mistake, pollers that time out, and an import that loads neither torch, Ray nor Optuna.

Against a real API (uvicorn in a thread, ``run_studies=False``: no Ray) on a real SQLite storage. A study's end is
written through the storage the way its driver writes it (``optuna_study.fail_study``, Optuna's own ``tell``), and a
probe's the way the probe runner does (its record's status), so every case takes well under a second.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import optuna
import pytest
from sqlalchemy import func, update
from sqlalchemy.orm import Session

from phasetune.service import cli
from phasetune.service.cli import ExitCode, main
from phasetune.service.db import ProbeRecord, make_engine
from phasetune.service.main import create_app
from phasetune.service.settings import Settings, get_settings
from phasetune.workers import optuna_study, study_attrs
from phasetune.workers.probe_names import ProbeStatus
from phasetune.workers.study_attrs import StudyStatus
from tests.conftest import BIN, free_port, served_in_thread, wait_for
from tests.factories import small_spec

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "ray", "optuna")


@pytest.fixture(scope="module")
def storage(tmp_path_factory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('cli') / 'phasetune.db'}"


@pytest.fixture(scope="module")
def api(storage: str, tmp_path_factory) -> Iterator[str]:
    workdir = tmp_path_factory.mktemp("api")
    settings = Settings(storage_url=storage, start_dashboard=False, results_dir=str(workdir / "results"),
                        artifacts_dir=str(workdir / "artifacts"))
    with served_in_thread(create_app(settings, run_studies=False)) as url:
        yield url


@pytest.fixture(autouse=True)
def no_token(monkeypatch) -> Iterator[None]:
    """The CLI's settings as a fresh shell would have them, without this machine's token."""
    monkeypatch.setenv("PHASETUNE_TOKEN", "")
    monkeypatch.setenv("PHASETUNE_TOKEN_FILE", "/nonexistent/phasetune-token")
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def run(capsys, *argv: str) -> tuple[int, str, str]:
    """``phasetune argv`` in this process: its exit code, stdout and stderr."""
    capsys.readouterr()
    try:
        code = main(list(argv))
    except SystemExit as exit_:  # argparse: --help and usage errors
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def submitted(api: str, name: str) -> dict:
    """A study stored through the API; it stays queued (no driver runs here)."""
    created = httpx.post(f"{api}/studies", json=small_spec(name), timeout=30)
    assert created.status_code == 201, created.text
    return created.json()


def completed(storage: str, api: str, name: str) -> dict:
    """A study that ended completed with one complete trial, written as its driver writes it."""
    study = submitted(api, name)
    loaded = optuna.load_study(study_name=name, storage=storage)
    trial = loaded.ask({"phase0.lr": optuna.distributions.FloatDistribution(0.05, 1.0, log=True)})
    trial.set_user_attr(study_attrs.SCHEDULE, {"family": "constant", "lr": 0.1})
    loaded.tell(trial, 0.75)
    loaded.set_user_attr(study_attrs.STATUS, StudyStatus.COMPLETED.value)
    return study


def get(api: str, path: str):
    return httpx.get(f"{api}{path}", timeout=30).json()


# --- exit codes, help and import -------------------------------------------------------------------------------


def test_exit_codes_are_distinct_and_documented():
    codes = list(ExitCode)
    assert len({int(code) for code in codes}) == len(codes) == len(ExitCode.__members__)  # no alias hides one
    assert ExitCode.USAGE == 2  # argparse's own
    epilog = cli.build_parser().epilog
    page = (ROOT / "docs" / "cli.md").read_text()
    for code in codes:
        assert f"{int(code):>3}  {code.name}" in epilog
    documented = re.findall(r"^\| \d+ \| `[A-Z_]+` \|.*$", page, re.M)
    assert documented == [f"| {int(code)} | `{code.name}` | {code.meaning} |" for code in codes]  # and no more


def _actions(parser: argparse.ArgumentParser, path: str) -> Iterator[tuple[str, argparse.Action]]:
    for action in parser._actions:  # argparse has no public walk of its tree
        if isinstance(action, argparse._SubParsersAction):
            helped = {choice.dest: choice.help for choice in action._choices_actions}
            for name, sub in action.choices.items():
                yield f"{path} {name}", argparse.Action([name], name, help=helped.get(name))
                yield from _actions(sub, f"{path} {name}")
        else:
            yield path, action


def test_every_command_option_and_argument_has_help():
    missing = [(path, action.dest) for path, action in _actions(cli.build_parser(), "phasetune")
               if not action.help or action.help == argparse.SUPPRESS]
    assert not missing


def test_the_probe_names_are_the_services():
    """One owner for the probes' names (workers.probe_names): the CLI, the storage and the runner share it."""
    from phasetune.service import db, schemas
    from phasetune.workers import probing

    assert cli.ProbeStatus is db.ProbeStatus is schemas.ProbeStatus
    assert cli.ProbeKind is probing.ProbeKind is schemas.ProbeKind
    assert set(cli.STUDY_OUTCOME) == {status for status in StudyStatus if status.finished}


def test_importing_the_cli_or_running_a_command_loads_neither_torch_ray_nor_optuna(api):
    done = subprocess.run([sys.executable, "-c", "import phasetune.service.cli, sys; "
                           f"assert not {set(HEAVY)!r} & set(sys.modules), set(sys.modules)"],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    # A command too: reading its settings (the API URL, the token) must not import the workloads (torch).
    script = ("import sys; from phasetune.service.cli import main; code = main(['list', '--json', '--api', "
              f"{api!r}]); loaded = {set(HEAVY)!r} & set(sys.modules); assert not loaded, loaded; sys.exit(code)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=ROOT,
                          env={**os.environ, "PHASETUNE_TOKEN_FILE": "/nonexistent/phasetune-token"})
    assert done.returncode == 0, done.stderr
    assert isinstance(json.loads(done.stdout), list)


def test_the_settings_data_root_default_is_the_workloads(monkeypatch):
    from phasetune.workers.workloads.paths import default_data_root

    monkeypatch.delenv("PHASETUNE_DATA_ROOT", raising=False)
    assert Settings().data_root == str(default_data_root())


# --- user mistakes: one line, a code, no traceback --------------------------------------------------------------


@pytest.mark.parametrize("content, says", [
    (None, "cannot read"), ("{not json", "is not valid JSON"), ("[1, 2]", "must be a JSON object, not list")])
def test_a_missing_or_invalid_spec_file_is_a_usage_error(capsys, tmp_path, api, content, says):
    spec = tmp_path / "spec.json"
    if content is not None:
        spec.write_text(content)
    code, out, err = run(capsys, "submit", str(spec), "--api", api)
    assert code == ExitCode.USAGE and says in err and "Traceback" not in err and out == ""


def test_a_bad_json_option_is_a_usage_error(capsys, api):
    code, _, err = run(capsys, "probe", "lr_range", "--workload", "quadratic", "--params", "{dim: 3}", "--api", api)
    assert code == ExitCode.USAGE and "argument --params" in err and "is not valid JSON" in err


def test_an_error_answer_is_an_api_error_naming_the_field(capsys, api, tmp_path):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(small_spec("cli-invalid", epochs=0)))
    code, out, err = run(capsys, "submit", str(spec), "--api", api)
    assert code == ExitCode.API_ERROR and err.startswith("phasetune: 422 ") and "epochs" in err and out == ""
    code, out, err = run(capsys, "status", "999999", "--api", api)
    assert code == ExitCode.API_ERROR and "404" in err and out == ""


def test_an_unreachable_api_has_its_own_code(capsys):
    code, out, err = run(capsys, "list", "--api", f"http://127.0.0.1:{free_port()}")
    assert code == ExitCode.UNREACHABLE and "cannot reach the API" in err and out == ""


def test_a_token_file_others_can_read_is_refused(capsys, api, tmp_path, monkeypatch):
    token = tmp_path / "token"
    token.write_text("pt_x\n")
    token.chmod(0o644)
    monkeypatch.setenv("PHASETUNE_TOKEN_FILE", str(token))
    get_settings.cache_clear()
    code, _, err = run(capsys, "list", "--api", api)
    assert code == ExitCode.USAGE and "chmod 600" in err


def test_a_closed_pipe_ends_quietly(api):
    """``phasetune workloads | head -1``: the reader is gone before the output is written."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run([str(BIN / "phasetune"), "workloads", "--api", api], stdout=write_end,
                              stderr=subprocess.PIPE, text=True, timeout=60,
                              env={**os.environ, "PHASETUNE_TOKEN_FILE": "/nonexistent/phasetune-token"})
    finally:
        os.close(write_end)
    assert done.returncode == ExitCode.PIPE_CLOSED and done.stderr == "", done.stderr


# --- --json: the API's JSON unchanged on stdout; human text otherwise --------------------------------------------


def test_read_commands_print_the_apis_json_unchanged(capsys, storage, api):
    study = completed(storage, api, "cli-json")
    for argv, path in [(["status", str(study["id"])], f"/studies/{study['id']}"), (["list"], "/studies"),
                       (["workloads"], "/workloads"), (["watch", str(study["id"])], f"/studies/{study['id']}")]:
        code, out, err = run(capsys, *argv, "--json", "--api", api)
        assert code == ExitCode.OK, err
        assert json.loads(out) == get(api, path), argv
    code, out, _ = run(capsys, "best", str(study["id"]), "--json", "--api", api)
    assert code == ExitCode.OK and json.loads(out) == get(api, f"/studies/{study['id']}")["best_trial"]


def test_status_is_a_few_lines_of_text(capsys, storage, api):
    study = completed(storage, api, "cli-status")
    code, out, err = run(capsys, "status", str(study["id"]), "--api", api)
    assert code == ExitCode.OK and err == ""
    assert out.splitlines() == [f"study {study['id']} cli-status: completed", "trials: 1 of 4 (COMPLETE 1)",
                                "best trial #0: val_accuracy = 0.75",
                                'best schedule: {"family": "constant", "lr": 0.1}']


def test_status_shows_a_tree_studys_store_and_stops():
    from phasetune.service.cli import _study_lines

    study = {"id": 3, "name": "t", "status": "completed", "trial_counts": {"COMPLETE": 2, "PRUNED": 1}, "n_trials": 3,
             "spec": {"n_trials": 3, "objective": {"metric": "val_accuracy"}},
             "checkpoints": {"checkpoints": 2, "bytes": 1_000_000, "reuses": 1, "reused_epochs": 3},
             "tree": {"trunks": {"a": [0, 1], "b": [2]}, "stops": {"prefix": 1}}}
    lines = _study_lines(study)
    assert lines[-2:] == ["checkpoints: 2 (1.0 MB), 1 reuses, 3 epochs reused",
                          "tree: 2 trunks, stops by kind: prefix 1"]


def test_best_prints_the_trial_or_only_its_schedule(capsys, storage, api):
    study = completed(storage, api, "cli-best")
    code, out, _ = run(capsys, "best", str(study["id"]), "--schedule", "--api", api)
    assert code == ExitCode.OK and json.loads(out) == {"family": "constant", "lr": 0.1}
    code, out, _ = run(capsys, "best", str(study["id"]), "--api", api)
    assert code == ExitCode.OK and out.startswith(f"best trial #0 of study {study['id']} cli-best: val_accuracy = 0.75")
    code, out, err = run(capsys, "best", str(submitted(api, "cli-no-best")["id"]), "--api", api)
    assert code == ExitCode.NO_RESULT and "no complete trial" in err and out == ""


def test_submit_prints_the_created_study_only(capsys, api, tmp_path):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(small_spec("cli-submit")))
    code, out, err = run(capsys, "submit", str(spec), "--name", "cli-submit-json", "--json", "--api", api)
    assert code == ExitCode.OK and err == ""
    created = json.loads(out)  # stdout is the API's answer and nothing else: it pipes into jq
    assert created["name"] == "cli-submit-json" and created["status"] == StudyStatus.QUEUED.value
    code, out, err = run(capsys, "submit", str(spec), "--api", api)
    assert code == ExitCode.OK and out.startswith("study ") and out.splitlines()[0].endswith("cli-submit: queued")


# --- watch and submit --watch exit with the study's outcome ------------------------------------------------------


def test_watch_exits_with_the_studys_outcome(capsys, storage, api):
    done = completed(storage, api, "cli-watch-done")
    failed = submitted(api, "cli-watch-failed")
    optuna_study.fail_study(optuna.storages.RDBStorage(storage), "cli-watch-failed", "the driver broke")
    stopped = submitted(api, "cli-watch-stopped")
    assert httpx.post(f"{api}/studies/{stopped['id']}/stop", json={}, timeout=30).json()["status"] == "stopped"

    code, out, err = run(capsys, "watch", str(done["id"]), "--api", api)
    assert code == ExitCode.OK and "cli-watch-done: completed" in out and "best trial #0" in out
    assert "cli-watch-done" in err and "status=completed" in err  # the progress bar, on stderr
    code, out, _ = run(capsys, "watch", str(failed["id"]), "--api", api)
    assert code == ExitCode.FAILED and "cli-watch-failed: failed" in out and "error: the driver broke" in out
    code, out, _ = run(capsys, "watch", str(stopped["id"]), "--json", "--api", api)
    assert code == ExitCode.STOPPED and json.loads(out)["status"] == "stopped"


def test_watch_and_submit_watch_time_out(capsys, api, tmp_path):
    queued = submitted(api, "cli-watch-queued")
    code, out, err = run(capsys, "watch", str(queued["id"]), "--timeout", "0.3", "--interval", "0.1", "--api", api)
    assert code == ExitCode.TIMEOUT and "--timeout 0.3s" in err and out == ""
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(small_spec("cli-submit-watch")))
    code, out, err = run(capsys, "submit", str(spec), "--watch", "--timeout", "0.3", "--interval", "0.1",
                         "--api", api)
    assert code == ExitCode.TIMEOUT and out == "" and "submitted study" in err


def test_watch_follows_the_study_to_its_end(capsys, storage, api):
    """A poll sees the study change: it ends failed while watched."""
    study = submitted(api, "cli-watch-live")
    timer = threading.Timer(0.5, optuna_study.fail_study, (optuna.storages.RDBStorage(storage), study["name"], "x"))
    timer.start()
    try:
        code, out, _ = run(capsys, "watch", str(study["id"]), "--interval", "0.1", "--timeout", "30", "--api", api)
    finally:
        timer.join()
    assert code == ExitCode.FAILED and ": failed" in out


def test_stop_prints_the_stopped_study(capsys, api):
    study = submitted(api, "cli-stop")
    code, out, _ = run(capsys, "stop", str(study["id"]), "--api", api)
    assert code == ExitCode.OK and out.splitlines()[0] == f"study {study['id']} cli-stop: stopped"


# --- probe: waits with a timeout, exits with the probe's outcome ---------------------------------------------------


def _probe_cli(capsys, api: str, *extra: str) -> tuple[threading.Thread, list]:
    """``phasetune probe`` in a thread of this process (capsys captures it there too): the thread and, once it has
    ended, its (code, stdout, stderr)."""
    outcome: list = []
    argv = ["probe", "lr_range", "--workload", "quadratic", "--params", '{"dim": 10}', "--interval", "0.1",
            "--timeout", "60", "--api", api, *extra]
    thread = threading.Thread(target=lambda: outcome.extend(run(capsys, *argv)))
    thread.start()
    return thread, outcome


def _end_probe(storage: str, before: int, **values) -> int:
    """The probe the CLI just submitted (the first id past ``before``), ended as the probe runner ends one."""
    engine = make_engine(storage)
    try:
        def submitted_id():
            with Session(engine) as session:
                return session.query(func.min(ProbeRecord.id)).filter(ProbeRecord.id > before).scalar()

        probe_id = wait_for(submitted_id, 30, "the CLI's probe", interval=0.1)
        with Session(engine) as session:
            session.execute(update(ProbeRecord).where(ProbeRecord.id == probe_id).values(**values))
            session.commit()
        return probe_id
    finally:
        engine.dispose()


def _last_probe_id(storage: str) -> int:
    engine = make_engine(storage)
    try:
        with Session(engine) as session:
            return session.query(func.max(ProbeRecord.id)).scalar() or 0
    finally:
        engine.dispose()


def test_probe_exits_with_its_outcome_and_prints_its_record(capsys, storage, api, tmp_path):
    result = {"lr_start": 0.01, "lr_best": 0.1, "lr_div": 1.0, "diverged": True, "lrs": [0.01, 0.1, 1.0],
              "losses": [1.0, 0.5, None]}  # a diverged run's last loss is stored as null
    png = tmp_path / "range.png"
    thread, outcome = _probe_cli(capsys, api, "--json", "--plot", str(png))
    probe_id = _end_probe(storage, _last_probe_id(storage), status=ProbeStatus.DONE.value, result=result)
    thread.join(timeout=60)
    code, out, err = outcome
    assert code == ExitCode.OK, err
    assert json.loads(out) == get(api, f"/probes/{probe_id}") and json.loads(out)["result"] == result
    assert f"probe {probe_id} (lr_range on quadratic) running" in err and f"wrote {png}" in err
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    thread, outcome = _probe_cli(capsys, api)
    probe_id = _end_probe(storage, probe_id, status=ProbeStatus.FAILED.value, error="no memory")
    thread.join(timeout=60)
    code, out, err = outcome
    assert code == ExitCode.FAILED and f"probe {probe_id} failed: no memory" in err and out == ""


def test_probe_times_out(capsys, api):
    code, out, err = run(capsys, "probe", "lr_range", "--workload", "quadratic", "--params", '{"dim": 10}',
                         "--timeout", "0.3", "--interval", "0.1", "--api", api)
    assert code == ExitCode.TIMEOUT and "has not ended after --timeout" in err and out == ""


def test_schedule_plot_refuses_an_invalid_schedule(capsys, tmp_path):
    schedule = tmp_path / "best.json"
    schedule.write_text(json.dumps({"family": "no-such-family"}))
    code, out, err = run(capsys, "schedule", "plot", str(schedule), "--epochs", "2", "--steps-per-epoch", "4",
                         "-o", str(tmp_path / "best.png"))
    assert code == ExitCode.USAGE and err.startswith("phasetune: invalid schedule: ") and out == ""
    assert not (tmp_path / "best.png").exists()
