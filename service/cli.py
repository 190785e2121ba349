"""The ``phasetune`` command: run the service, and talk to it over REST (the CLI never touches the storage).

Written for scripts as much as for people: every outcome has its own exit code (``ExitCode``), ``--json`` prints
the API's JSON unchanged on stdout, and progress and status lines go to stderr. Importing this module loads
neither torch, Ray nor Optuna (the commands that need them import them inside), so each command starts fast.
"""

from __future__ import annotations

import argparse
import enum
import json
import os
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

# Names-only modules: the CLI imports neither torch, Ray nor Optuna.
from phasetune.workers.probe_names import ProbeKind, ProbeStatus
from phasetune.workers.study_attrs import StudyStatus

if TYPE_CHECKING:
    from phasetune.service.settings import Settings

ENDED_TRIALS = ("COMPLETE", "PRUNED", "FAIL")  # Optuna's names of the states a trial ends in, as the API sends them
WATCH_TIMEOUT_S = 24 * 3600.0  # a study runs for hours; a watch that outlives a day is waiting on a stuck one
PROBE_TIMEOUT_S = 3600.0  # a probe takes minutes, more while it waits for a node that can run it


class ExitCode(enum.IntEnum):
    """What ``phasetune`` exits with, one code per outcome a script may act on (docs/cli.md lists them)."""

    meaning: str

    def __new__(cls, code: int, meaning: str) -> ExitCode:
        member = int.__new__(cls, code)
        member._value_ = code
        member.meaning = meaning
        return member

    OK = 0, "done; a watched study or probe completed"
    ERROR = 1, "anything else (a database `serve` or `token` cannot open), or a bug in phasetune; a traceback shows"
    USAGE = 2, ("a bad command line or setup: an unknown option or value, an input file missing or not valid JSON, "
                "a token file others can read, a `serve` exposure refused")
    API_ERROR = 3, "the API answered with an error (4xx or 5xx); the message gives its status and detail"
    UNREACHABLE = 4, "no answer from the API (refused, unknown host, timed out): is `phasetune serve` running?"
    FAILED = 5, "the study or probe ended `failed` (its error is printed)"
    STOPPED = 6, "the study ended `stopped`"
    TIMEOUT = 7, "--timeout passed before the study or probe ended (it goes on running)"
    NO_RESULT = 8, "`best`: the study has no complete trial"
    INTERRUPTED = 130, "interrupted (Ctrl-C), as the shell reports SIGINT"
    PIPE_CLOSED = 141, "stdout was closed by its reader (piped into `head`), as the shell reports SIGPIPE"


STUDY_OUTCOME = {StudyStatus.COMPLETED: ExitCode.OK, StudyStatus.FAILED: ExitCode.FAILED,
                 StudyStatus.STOPPED: ExitCode.STOPPED}
assert set(STUDY_OUTCOME) == {status for status in StudyStatus if status.finished}


class CliError(Exception):
    """A failure the user can act on: one line on stderr (no traceback) and its exit code."""

    def __init__(self, message: str, code: ExitCode) -> None:
        super().__init__(message)
        self.code = code


def _out(text: str) -> None:
    """A line of the command's result (stdout: what a script reads)."""
    print(text)  # noqa: T201


def _note(text: str) -> None:
    """A progress or status line (stderr: it never mixes into the result)."""
    print(f"phasetune: {text}", file=sys.stderr, flush=True)  # noqa: T201


def _print_json(data: Any) -> None:
    _out(json.dumps(data, indent=2))


def _json_object(text: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"{what} is not valid JSON ({err})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"{what} must be a JSON object, not {type(value).__name__}")
    return value


def json_file(path: str) -> dict[str, Any]:
    """An argparse type: the JSON object in the file at ``path`` (a missing or invalid file is a usage error)."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise argparse.ArgumentTypeError(f"cannot read {path}: {getattr(err, 'strerror', None) or err}") from None
    return _json_object(text, path)


def json_arg(text: str) -> dict[str, Any]:
    """An argparse type: a JSON object given on the command line."""
    return _json_object(text, repr(text))


def _token(settings: Settings) -> str | None:
    """PHASETUNE_TOKEN, else the token file if there is one (refused unless only its owner can read it)."""
    if settings.token:
        return settings.token
    path = Path(settings.token_file)
    if not path.is_file():
        return None
    if path.stat().st_mode & 0o077:
        raise CliError(f"{path} is readable by others (mode {path.stat().st_mode & 0o777:o}); chmod 600 it",
                       ExitCode.USAGE)
    return path.read_text().strip() or None


def _client(args: argparse.Namespace) -> httpx.Client:
    from phasetune.service.settings import get_settings

    settings = get_settings()
    token = _token(settings)
    # Every POST the API takes is JSON, a bodyless one (stop) included: it refuses others (service/browser_guard.py).
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    return httpx.Client(base_url=args.api or settings.api_url, timeout=60, headers=headers)


def _call(args: argparse.Namespace, method: str, path: str, **kwargs: Any) -> Any:
    """The API's JSON answer; CliError(UNREACHABLE) without an answer, CliError(API_ERROR) for an error answer."""
    with _client(args) as client:
        try:
            response = client.request(method, path, **kwargs)
        except httpx.TransportError as err:
            raise CliError(f"cannot reach the API at {client.base_url} ({err or type(err).__name__}); is "
                           f"`phasetune serve` running?", ExitCode.UNREACHABLE) from None
    if response.status_code >= 400:
        try:
            detail = response.json().get("detail", response.text)
        except (ValueError, AttributeError):  # not a JSON object (a proxy's error page, a crash): show it as it came
            detail = response.text
        if isinstance(detail, list):  # validation errors: name each field
            detail = "; ".join(f"{'.'.join(str(p) for p in d['loc'][1:])}: {d['msg']}" for d in detail)
        raise CliError(f"{response.status_code} {detail}", ExitCode.API_ERROR)
    try:
        return response.json()
    except ValueError:
        raise CliError(f"{response.status_code} from {response.url} is not JSON: {response.text[:200]!r}",
                       ExitCode.API_ERROR) from None


def _poll(args: argparse.Namespace, path: str, record: Any, ended: Callable[[Any], bool], what: str,
          each: Callable[[Any], None] = lambda record: None) -> Any:
    """``GET path`` every ``args.interval`` seconds, from ``record`` on, until ``ended`` says so: the last answer.
    ``each`` sees every answer (a progress bar).

    CliError(TIMEOUT) once ``args.timeout`` seconds pass (0: no limit). A lost connection is retried until then
    (the API may restart under a long study; its drivers go on), an error answer is not.
    """
    deadline = time.monotonic() + args.timeout if args.timeout > 0 else float("inf")
    lost = False
    while True:
        each(record)
        if ended(record):
            return record
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise CliError(f"{what} has not ended after --timeout {args.timeout:g}s (it goes on; watch it again "
                           f"or raise --timeout)", ExitCode.TIMEOUT)
        time.sleep(min(args.interval, remaining))
        try:
            record = _call(args, "GET", path)
        except CliError as err:
            if err.code is not ExitCode.UNREACHABLE:
                raise
            if not lost:
                _note(f"{err}; retrying until --timeout")
            lost = True
        else:
            lost = False


def cmd_serve(args: argparse.Namespace) -> None:
    import uvicorn

    from phasetune.service import children
    from phasetune.service.db import migrate
    from phasetune.service.main import create_app
    from phasetune.service.settings import DATA_DIR, get_settings

    settings = get_settings()
    DATA_DIR.mkdir(exist_ok=True)
    migrate(settings.storage_url)
    _check_exposure(settings, args.host, args.insecure)
    # No Ray here: the API's Ray agent (a child process) connects, starting the local head if none runs.
    ray = settings.ray_address or (f"a local head on 127.0.0.1:{settings.ray_port} (started if none runs; "
                                   f"`phasetune stop-ray` stops it)")
    _note(f"Ray: {ray}; storage {settings.storage_url}")
    dashboard = None
    if settings.start_dashboard:
        try:
            dashboard, stale, log = children.start_dashboard(settings, DATA_DIR)
        except children.PortHeld as err:
            raise CliError(f"the Optuna dashboard cannot start: {err}", ExitCode.USAGE) from None
        if stale is not None:
            _note(f"stopped the Optuna dashboard (pid {stale}) a previous serve left on port "
                  f"{settings.dashboard_port}")
        if dashboard is None:
            _note(f"WARNING: the Optuna dashboard exited at start (see {log}); serving without it")
        else:
            _note(f"Optuna dashboard at {settings.dashboard_address}")
    try:
        app = create_app(settings, host=args.host, insecure=args.insecure)
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    finally:
        if dashboard is not None:
            children.stop_dashboard(dashboard, DATA_DIR)


def _check_exposure(settings: Any, host: str, insecure: bool) -> None:
    """Refuse to serve beyond loopback without a token (or with the dashboard, which has no auth, beyond it),
    unless told ``--insecure``; then say so loudly."""
    from phasetune.service import auth
    from phasetune.service.db import make_engine
    from phasetune.service.settings import AuthMode

    exposed = not auth.is_loopback(host) or not auth.is_loopback(settings.dashboard_host)
    if insecure:
        if exposed or settings.auth is AuthMode.ON:
            _note(f"WARNING: --insecure: the API on {host} answers anyone who reaches it, without a token; the "
                  f"dashboard is on {settings.dashboard_host}")
        return
    if settings.start_dashboard and not auth.is_loopback(settings.dashboard_host):
        raise CliError(f"the Optuna dashboard has no authentication and can delete studies; it stays on loopback "
                       f"(PHASETUNE_DASHBOARD_HOST={settings.dashboard_host} refused; --insecure to allow it)",
                       ExitCode.USAGE)
    if not auth.auth_enabled(settings.auth, host):
        return
    engine = make_engine(settings.storage_url)
    try:
        tokens = auth.active_tokens(engine)
    finally:
        engine.dispose()
    if tokens == 0:
        where = f"--host {host}" if not auth.is_loopback(host) else "PHASETUNE_AUTH=on"
        raise CliError(f"{where} needs API tokens and the database has none: create one first with "
                       f"`phasetune token create --scope admin` (or pass --insecure to serve without auth)",
                       ExitCode.USAGE)


def _token_engine() -> Any:
    from phasetune.service.db import make_engine, migrate
    from phasetune.service.settings import get_settings

    url = get_settings().storage_url
    migrate(url)
    return make_engine(url)


def cmd_token_create(args: argparse.Namespace) -> None:
    from phasetune.service import auth

    record, token = auth.create_token(_token_engine(), auth.Scope(args.scope), args.name)
    named = f", {record.name}" if record.name else ""
    _note(f"token {record.id} ({record.scope}{named}), shown only now:")
    _out(token)


def cmd_token_list(args: argparse.Namespace) -> None:
    from phasetune.service import auth

    for record in auth.list_tokens(_token_engine()):
        state = "active" if record.revoked_at is None else "revoked"
        _out(f"{record.id}\t{record.scope}\t{state}\t{record.created_at:%Y-%m-%d %H:%M}\t{record.name}")


def cmd_token_revoke(args: argparse.Namespace) -> None:
    from phasetune.service import auth

    if auth.revoke_token(_token_engine(), args.id) is None:
        raise CliError(f"no token with id {args.id}", ExitCode.USAGE)
    _note(f"token {args.id} revoked")


def cmd_stop_ray(args: argparse.Namespace) -> None:
    from phasetune.service import ray_cluster
    from phasetune.service.settings import get_settings

    settings = get_settings()
    stopped = ray_cluster.stop_local_head(settings)
    print(f"phasetune: stopped the local Ray head on port {settings.ray_port} ({stopped} processes)"  # noqa: T201
          if stopped else f"phasetune: no local Ray head of phasetune's on port {settings.ray_port}")


def cmd_migrate(args: argparse.Namespace) -> None:
    from phasetune.service.db import migrate
    from phasetune.service.settings import get_settings

    migrate(get_settings().storage_url)
    _note("schema ready")


def _study_lines(study: Mapping[str, Any]) -> list[str]:
    """A study in a few lines (``--json`` gives all of it): status, trials, the best trial and its schedule, what
    it waits on or why it failed, checkpoints, a tree study's trunks and stops, the dashboard."""
    counts = study["trial_counts"]
    by_state = ", ".join(f"{state} {n}" for state, n in counts.items()) or "none yet"
    lines = [f"study {study['id']} {study['name']}: {study['status']}",
             f"trials: {study['n_trials']} of {study['spec']['n_trials']} ({by_state})"]
    if study.get("best_trial"):
        best = study["best_trial"]
        lines.append(f"best trial #{best['number']}: {study['spec']['objective']['metric']} = {best['value']:.6g}")
        lines.append(f"best schedule: {json.dumps(best['schedule'])}")
    if study.get("waiting_for"):
        lines.append(f"waiting for: {study['waiting_for']}")
    if study.get("error"):
        lines.append(f"error: {study['error']}")
    if study.get("checkpoints"):
        store = study["checkpoints"]
        lines.append(f"checkpoints: {store.get('checkpoints', 0)} ({store.get('bytes', 0) / 1e6:.1f} MB), "
                     f"{store.get('reuses', 0)} reuses, {store.get('reused_epochs', 0)} epochs reused")
    if study.get("tree"):
        tree = study["tree"]
        stops = ", ".join(f"{kind} {n}" for kind, n in sorted(tree.get("stops", {}).items())) or "none"
        lines.append(f"tree: {len(tree.get('trunks', {}))} trunks, stops by kind: {stops}")
    if study.get("dashboard_url"):
        lines.append(f"dashboard: {study['dashboard_url']}")
    return lines


def _show_study(args: argparse.Namespace, study: Mapping[str, Any]) -> None:
    if args.json:
        _print_json(study)
    else:
        _out("\n".join(_study_lines(study)))


def cmd_submit(args: argparse.Namespace) -> ExitCode:
    spec = dict(args.spec)
    if args.name:
        spec["name"] = args.name
    study = _call(args, "POST", "/studies", json=spec)
    if not args.watch:
        _show_study(args, study)
        return ExitCode.OK
    _note(f"submitted study {study['id']} ({study['name']})")
    return _watch(args, study)


def cmd_status(args: argparse.Namespace) -> ExitCode:
    _show_study(args, _call(args, "GET", f"/studies/{args.id}"))
    return ExitCode.OK


def cmd_list(args: argparse.Namespace) -> ExitCode:
    studies = _call(args, "GET", "/studies")
    if args.json:
        _print_json(studies)
        return ExitCode.OK
    for study in studies:
        _out(f"{study['id']:>4}  {study['status']:<9}  {study['n_trials']:>4} trials  {study['name']}")
    return ExitCode.OK


def cmd_watch(args: argparse.Namespace) -> ExitCode:
    return _watch(args, _call(args, "GET", f"/studies/{args.id}"))


def _watch(args: argparse.Namespace, study: Mapping[str, Any]) -> ExitCode:
    """A progress bar (stderr) until the study ends, then the study (stdout); its outcome is the exit code."""
    from tqdm import tqdm

    total = study["spec"]["n_trials"]
    with tqdm(total=total, desc=study["name"], unit="trial", file=sys.stderr) as bar:
        def show(study: Mapping[str, Any]) -> None:
            counts = study["trial_counts"]
            bar.update(min(sum(counts.get(s, 0) for s in ENDED_TRIALS), total) - bar.n)
            bar.set_postfix(status=study["status"], running=counts.get("RUNNING", 0), pruned=counts.get("PRUNED", 0))

        study = _poll(args, f"/studies/{study['id']}", study, lambda s: StudyStatus(s["status"]).finished,
                      f"study {study['id']}", show)
    _show_study(args, study)
    return STUDY_OUTCOME[StudyStatus(study["status"])]


def cmd_best(args: argparse.Namespace) -> ExitCode:
    if args.json and args.schedule:
        raise CliError("--json prints the whole trial, --schedule only its schedule: pick one", ExitCode.USAGE)
    study = _call(args, "GET", f"/studies/{args.id}")
    best = study["best_trial"]
    if not best:
        raise CliError(f"study {args.id} has no complete trial ({study['status']})", ExitCode.NO_RESULT)
    if args.json:
        _print_json(best)
    elif args.schedule:
        _print_json(best["schedule"])
    else:
        _out(f"best trial #{best['number']} of study {study['id']} {study['name']}: "
             f"{study['spec']['objective']['metric']} = {best['value']:.6g}")
        _out(f"params: {json.dumps(best['params'])}")
        _out(f"schedule: {json.dumps(best['schedule'], indent=2)}")
    return ExitCode.OK


def cmd_stop(args: argparse.Namespace) -> ExitCode:
    _show_study(args, _call(args, "POST", f"/studies/{args.id}/stop"))
    return ExitCode.OK


def cmd_workloads(args: argparse.Namespace) -> ExitCode:
    """The registered workloads (``GET /workloads``): name, where it comes from, its params and metrics."""
    entries = _call(args, "GET", "/workloads")
    if args.json:
        _print_json(entries)
        return ExitCode.OK
    for entry in entries:
        origin = f"{entry['distribution']} {entry['version']}"
        if entry.get("error"):
            _out(f"{entry['name']}  ({origin})  FAILED TO LOAD: {entry['error']}")
            continue
        _out(f"{entry['name']}  ({origin})  {entry['description']}")
        if entry.get("unavailable"):
            _out(f"    NOT AVAILABLE HERE: {entry['unavailable']}")
        for param in entry["params"]:
            default = "required" if param["required"] else f"default {param['default']!r}"
            _out(f"    {param['name']}: {param['kind']}, {default}  {param['help']}")
        metrics = ", ".join(f"{m['name']} ({'max' if m['direction'] == 'maximize' else 'min'})"
                            for m in entry["metrics"])
        _out(f"    metrics: {metrics}")
        probe = f"curvature probe: yes ({entry['loss_kind']})" if entry["loss_kind"] else "curvature probe: no"
        _out(f"    {probe}; LR range test: yes")
    return ExitCode.OK


def cmd_schedule_plot(args: argparse.Namespace) -> ExitCode:
    from phasetune.search_spaces import SpecError
    from phasetune.search_spaces.plot import plot_schedule

    try:
        plot_schedule(args.schedule, args.epochs, args.steps_per_epoch, path=args.output)
    except SpecError as err:
        raise CliError(f"invalid schedule: {err}", ExitCode.USAGE) from None
    _note(f"wrote {args.output}")
    return ExitCode.OK


def cmd_probe(args: argparse.Namespace) -> ExitCode:
    """Run a regime probe over REST (``POST /probes``) and wait for it; ``--plot`` draws the range test's curve."""
    if args.plot and args.kind != "lr_range":
        raise CliError("--plot draws the LR range test's curve; use it with `probe lr_range`", ExitCode.USAGE)
    body = {"kind": args.kind, "workload": {"name": args.workload, "params": args.params},
            "seed": args.seed, "options": args.options}
    record = _call(args, "POST", "/probes", json=body)  # 202: it runs on the cluster; its record says when it ends
    _note(f"probe {record['id']} ({args.kind} on {args.workload}) running")
    record = _poll(args, f"/probes/{record['id']}", record, lambda r: r["status"] != ProbeStatus.RUNNING,
                   f"probe {record['id']}")
    if args.json:
        _print_json(record)
    if record["status"] == ProbeStatus.FAILED:
        raise CliError(f"probe {record['id']} failed: {record['error']}", ExitCode.FAILED)
    result = record["result"]
    if not args.json:
        if args.kind == "curvature":
            _out(f"probe {record['id']}: lambda0 = {result['lambda0']:.6g}, lr_crit = 2/lambda0 = "
                 f"{result['lr_crit']:.6g} ({result['iterations']} iterations)")
        else:
            _out(f"probe {record['id']}: lr_start = {result['lr_start']:.4g}, lr_best = {result['lr_best']:.4g}, "
                 f"lr_div = {result['lr_div']:.4g} (diverged: {result['diverged']})")
    if args.plot:
        _plot_range_test(result, f"LR range test: {args.workload} (seed {args.seed})", args.plot)
        _note(f"wrote {args.plot}")
    return ExitCode.OK


def _plot_range_test(result: Mapping[str, Any], title: str, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # A diverged run ends on a non-finite loss (stored as null): draw the finite part.
    points = [(lr, loss) for lr, loss in zip(result["lrs"], result["losses"], strict=True) if loss is not None]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([p[0] for p in points], [p[1] for p in points], color="black", lw=1.5, label="smoothed loss")
    for key, color in (("lr_start", "tab:green"), ("lr_best", "tab:blue"), ("lr_div", "tab:red")):
        ax.axvline(result[key], color=color, ls="--", lw=1, label=f"{key} = {result[key]:.3g}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("smoothed training loss")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _epilog() -> str:
    codes = "\n".join(f"  {code.value:>3}  {code.name:<12} {code.meaning}" for code in ExitCode)
    return (f"exit codes (docs/cli.md):\n{codes}\n\n--json prints the API's JSON unchanged on stdout; progress and "
            f"status lines go to stderr.")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="phasetune", description="Run the phasetune service; talk to it over REST.",
                                     epilog=_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")

    serve = commands.add_parser("serve", help="run the API (and a local Ray head and the Optuna dashboard)")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to bind (default: %(default)s; beyond loopback it needs API tokens)")
    serve.add_argument("--port", type=int, default=8000, help="port to bind (default: %(default)s)")
    serve.add_argument("--insecure", action="store_true",
                       help="serve without API tokens even beyond loopback (anyone who reaches the port can use it)")
    serve.set_defaults(func=cmd_serve)
    token = commands.add_parser("token", help="API tokens (on the database: PHASETUNE_STORAGE_URL)"
                                ).add_subparsers(dest="action", required=True, metavar="action")
    create = token.add_parser("create", help="create a token and print it (once)")
    create.add_argument("--scope", required=True, choices=["read", "write", "admin"],
                        help="what it may do: read (GETs), write (also submit, stop, probe), admin (also tokens)")
    create.add_argument("--name", default="", help="what it is for (shown by `token list`)")
    create.set_defaults(func=cmd_token_create)
    token.add_parser("list", help="id, scope, state, creation time and name of every token").set_defaults(
        func=cmd_token_list)
    revoke = token.add_parser("revoke", help="revoke a token by id")
    revoke.add_argument("id", type=int, help="the token's id (`token list`)")
    revoke.set_defaults(func=cmd_token_revoke)
    commands.add_parser("migrate", help="create the database schema").set_defaults(func=cmd_migrate)
    commands.add_parser("stop-ray", help="stop the local Ray head `serve` started (only it: not `ray stop`)"
                        ).set_defaults(func=cmd_stop_ray)

    def client_command(name: str, func: Callable[[argparse.Namespace], ExitCode], help: str, *,
                       with_id: bool = True, poll: float | None = None) -> argparse.ArgumentParser:
        """A command that talks to the API: ``--api``, ``--json``, and for a poller ``--timeout``/``--interval``."""
        sub = commands.add_parser(name, help=help, description=help)
        if with_id:
            sub.add_argument("id", type=int, help="the study's id (`phasetune list`)")
        sub.add_argument("--api", default=None, help="API base URL (default: $PHASETUNE_API_URL)")
        sub.add_argument("--json", action="store_true", help="print the API's JSON answer unchanged")
        if poll is not None:
            sub.add_argument("--timeout", type=float, default=poll, metavar="SECONDS",
                             help="give up waiting after this long, exit code 7 (default: %(default)g; 0: no limit)")
            sub.add_argument("--interval", type=float, default=2.0, metavar="SECONDS",
                             help="seconds between polls (default: %(default)g)")
        sub.set_defaults(func=func)
        return sub

    submit = client_command("submit", cmd_submit, "submit a study spec (a JSON file)", with_id=False,
                            poll=WATCH_TIMEOUT_S)
    submit.add_argument("spec", type=json_file, help="the study spec: a JSON file (see the spec reference)")
    submit.add_argument("--name", help="override the spec's study name (names are unique)")
    submit.add_argument("--watch", action="store_true",
                        help="show progress until the study ends; exit with its outcome (--timeout bounds it)")
    client_command("status", cmd_status, "a study's status, trial counts and best trial")
    client_command("list", cmd_list, "all studies: id, status, trials, name", with_id=False)
    client_command("watch", cmd_watch, "a progress bar until the study ends; exit with its outcome",
                   poll=WATCH_TIMEOUT_S)
    best = client_command("best", cmd_best, "the best trial: value, params, schedule")
    best.add_argument("--schedule", action="store_true",
                      help="print only the schedule's JSON (for phasetune.attach and `schedule plot`)")
    client_command("stop", cmd_stop, "stop a study's trials", with_id=True)
    client_command("workloads", cmd_workloads, "the registered workloads: params, metrics, origin", with_id=False)

    probe = client_command("probe", cmd_probe, "run a regime probe on a workload (POST /probes) and wait for it",
                           with_id=False, poll=PROBE_TIMEOUT_S)
    probe.add_argument("kind", choices=[kind.value for kind in ProbeKind],
                       help="curvature: lambda0 and lr_crit; lr_range: the LR range test")
    probe.add_argument("--workload", required=True, help="a workload name (`phasetune workloads` lists them)")
    probe.add_argument("--params", type=json_arg, default={}, help="the workload's params as a JSON object")
    probe.add_argument("--options", type=json_arg, default={},
                       help="the probe's options as a JSON object (e.g. {\"steps\": 200})")
    probe.add_argument("--seed", type=int, default=0, help="the seed the workload is built with (default: 0)")
    probe.add_argument("--plot", metavar="PNG",
                       help="lr_range only: draw smoothed loss against lr (log x) to this file")

    schedule = commands.add_parser("schedule", help="schedule tools").add_subparsers(dest="tool", required=True,
                                                                                   metavar="tool")
    plot = schedule.add_parser("plot", help="draw lr and momentum against epochs")
    plot.add_argument("schedule", type=json_file, help="a concrete schedule JSON file (`best --schedule` writes one)")
    plot.add_argument("--epochs", type=int, required=True, help="epochs to draw")
    plot.add_argument("--steps-per-epoch", type=int, required=True, help="optimizer steps per epoch")
    plot.add_argument("-o", "--output", required=True, help="the image file to write (PNG)")
    plot.set_defaults(func=cmd_schedule_plot)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; its exit code (``ExitCode``). A user's mistake is one line on stderr, never a traceback."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)  # a usage error exits 2 here, as argparse does
        code = args.func(args)
        sys.stdout.flush()  # inside the try: a closed pipe shows here, not at interpreter exit
    except CliError as err:
        _note(str(err))
        return err.code
    except KeyboardInterrupt:
        _note("interrupted")
        return ExitCode.INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`| head`). As CPython's docs advise for SIGPIPE: point stdout at devnull so the
        # flush at exit does not fail again, and end quietly.
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):  # stdout is not a file descriptor (a test's capture)
            pass
        return ExitCode.PIPE_CLOSED
    return ExitCode.OK if code is None else code


if __name__ == "__main__":
    sys.exit(main())
