"""The ``phasetune`` command: run the service, and talk to it over REST (the CLI never touches the storage)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from phasetune.workers.study_attrs import (
    StudyStatus,  # a names-only module: the CLI imports neither torch, Ray nor Optuna
)

FINISHED = {status.value for status in StudyStatus if status.finished}
ENDED_TRIALS = ("COMPLETE", "PRUNED", "FAIL")  # Optuna's names of the states a trial ends in, as the API sends them


def _token(settings: Any) -> str | None:
    """PHASETUNE_TOKEN, else the token file if there is one (refused unless only its owner can read it)."""
    if settings.token:
        return settings.token
    path = Path(settings.token_file)
    if not path.is_file():
        return None
    if path.stat().st_mode & 0o077:
        sys.exit(f"phasetune: {path} is readable by others (mode {path.stat().st_mode & 0o777:o}); chmod 600 it")
    return path.read_text().strip() or None


def _client(args: argparse.Namespace) -> httpx.Client:
    from phasetune.service.settings import get_settings

    settings = get_settings()
    token = _token(settings)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=args.api or settings.api_url, timeout=60, headers=headers)


def _call(args: argparse.Namespace, method: str, path: str, **kwargs: Any) -> Any:
    with _client(args) as client:
        try:
            response = client.request(method, path, **kwargs)
        except httpx.TransportError as err:
            sys.exit(f"phasetune: cannot reach the API at {client.base_url} ({err}); is `phasetune serve` running?")
    if response.status_code >= 400:
        try:
            detail = response.json().get("detail", response.text)
        except ValueError:  # not JSON (a proxy's error page, a crash): show it as it came
            detail = response.text
        if isinstance(detail, list):  # validation errors: name each field
            detail = "; ".join(f"{'.'.join(str(p) for p in d['loc'][1:])}: {d['msg']}" for d in detail)
        sys.exit(f"phasetune: {response.status_code} {detail}")
    return response.json()


def _print(data: Any) -> None:
    print(json.dumps(data, indent=2))  # noqa: T201


def cmd_serve(args: argparse.Namespace) -> None:
    import uvicorn

    from phasetune.service import ray_cluster
    from phasetune.service.db import migrate
    from phasetune.service.main import create_app
    from phasetune.service.settings import DATA_DIR, get_settings

    settings = get_settings()
    DATA_DIR.mkdir(exist_ok=True)
    migrate(settings.storage_url)
    _check_exposure(settings, args.host, args.insecure)
    address = ray_cluster.connect(settings)
    print(f"phasetune: Ray at {address}; storage {settings.storage_url}", flush=True)  # noqa: T201
    dashboard = None
    if settings.start_dashboard:
        log = open(DATA_DIR / "dashboard.log", "ab")  # noqa: SIM115 (lives as long as the dashboard)
        dashboard = subprocess.Popen(
            [str(Path(sys.executable).with_name("optuna-dashboard")), settings.storage_url,
             "--host", settings.dashboard_host, "--port", str(settings.dashboard_port),
             "--artifact-dir", settings.artifacts_dir],
            stdout=log, stderr=subprocess.STDOUT)
        print(f"phasetune: Optuna dashboard at {settings.dashboard_address}", flush=True)  # noqa: T201
    try:
        app = create_app(settings, host=args.host, insecure=args.insecure)
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    finally:
        if dashboard is not None:
            dashboard.terminate()
            dashboard.wait(timeout=10)


def _check_exposure(settings: Any, host: str, insecure: bool) -> None:
    """Refuse to serve beyond loopback without a token (or with the dashboard, which has no auth, beyond it),
    unless told ``--insecure``; then say so loudly."""
    from phasetune.service import auth
    from phasetune.service.db import make_engine
    from phasetune.service.settings import AuthMode

    exposed = not auth.is_loopback(host) or not auth.is_loopback(settings.dashboard_host)
    if insecure:
        if exposed or settings.auth is AuthMode.ON:
            print(f"phasetune: WARNING: --insecure: the API on {host} answers anyone who reaches it, without a "  # noqa: T201
                  f"token; the dashboard is on {settings.dashboard_host}", file=sys.stderr, flush=True)
        return
    if settings.start_dashboard and not auth.is_loopback(settings.dashboard_host):
        sys.exit(f"phasetune: the Optuna dashboard has no authentication and can delete studies; it stays on "
                 f"loopback (PHASETUNE_DASHBOARD_HOST={settings.dashboard_host} refused; --insecure to allow it)")
    if not auth.auth_enabled(settings.auth, host):
        return
    engine = make_engine(settings.storage_url)
    try:
        tokens = auth.active_tokens(engine)
    finally:
        engine.dispose()
    if tokens == 0:
        where = f"--host {host}" if not auth.is_loopback(host) else "PHASETUNE_AUTH=on"
        sys.exit(f"phasetune: {where} needs API tokens and the database has none: create one first with "
                 f"`phasetune token create --scope admin` (or pass --insecure to serve without auth)")


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
    print(f"phasetune: token {record.id} ({record.scope}{named}), shown only now:", file=sys.stderr)  # noqa: T201
    print(token)  # noqa: T201


def cmd_token_list(args: argparse.Namespace) -> None:
    from phasetune.service import auth

    for record in auth.list_tokens(_token_engine()):
        state = "active" if record.revoked_at is None else "revoked"
        print(f"{record.id}\t{record.scope}\t{state}\t{record.created_at:%Y-%m-%d %H:%M}\t{record.name}")  # noqa: T201


def cmd_token_revoke(args: argparse.Namespace) -> None:
    from phasetune.service import auth

    if auth.revoke_token(_token_engine(), args.id) is None:
        sys.exit(f"phasetune: no token with id {args.id}")
    print(f"phasetune: token {args.id} revoked")  # noqa: T201


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
    print("phasetune: schema ready")  # noqa: T201


def cmd_submit(args: argparse.Namespace) -> None:
    spec = json.loads(Path(args.spec).read_text())
    if args.name:
        spec["name"] = args.name
    study = _call(args, "POST", "/studies", json=spec)
    print(f"phasetune: submitted study {study['id']} ({study['name']})", flush=True)  # noqa: T201
    if args.watch:
        args.id = study["id"]
        cmd_watch(args)
    else:
        _print({"id": study["id"], "name": study["name"], "status": study["status"]})


def cmd_status(args: argparse.Namespace) -> None:
    study = _call(args, "GET", f"/studies/{args.id}")
    study.pop("spec", None)
    _print(study)


def cmd_list(args: argparse.Namespace) -> None:
    for study in _call(args, "GET", "/studies"):
        print(f"{study['id']:>4}  {study['status']:<9}  {study['n_trials']:>4} trials  {study['name']}")  # noqa: T201


def cmd_watch(args: argparse.Namespace) -> None:
    from tqdm import tqdm

    study = _call(args, "GET", f"/studies/{args.id}")
    total = study["spec"]["n_trials"]
    with tqdm(total=total, desc=study["name"], unit="trial") as bar:
        while True:
            counts = study["trial_counts"]
            finished = sum(counts.get(s, 0) for s in ENDED_TRIALS)
            bar.update(min(finished, total) - bar.n)
            bar.set_postfix(status=study["status"], running=counts.get("RUNNING", 0), pruned=counts.get("PRUNED", 0))
            if study["status"] in FINISHED:
                break
            time.sleep(args.interval)
            study = _call(args, "GET", f"/studies/{args.id}")
    print(f"phasetune: study {study['id']} {study['status']}: {study['trial_counts']}")  # noqa: T201
    if study.get("error"):
        print(study["error"], file=sys.stderr)  # noqa: T201
    if study["status"] == StudyStatus.COMPLETED.value and study["best_trial"]:
        _print_best(study)


def _print_best(study: dict[str, Any]) -> None:
    best = study["best_trial"]
    objective = study["spec"]["objective"]
    print(f"best trial #{best['number']}: {objective['metric']} = {best['value']:.4f}")  # noqa: T201
    _print(best["schedule"])
    if study.get("dashboard_url"):
        print(f"dashboard: {study['dashboard_url']}")  # noqa: T201


def cmd_best(args: argparse.Namespace) -> None:
    study = _call(args, "GET", f"/studies/{args.id}")
    if not study["best_trial"]:
        sys.exit(f"phasetune: study {args.id} has no complete trial yet ({study['status']})")
    if args.json:
        _print(study["best_trial"]["schedule"])
    else:
        _print_best(study)


def cmd_stop(args: argparse.Namespace) -> None:
    study = _call(args, "POST", f"/studies/{args.id}/stop")
    print(f"phasetune: study {study['id']} {study['status']}")  # noqa: T201


def cmd_workloads(args: argparse.Namespace) -> None:
    """The registered workloads (``GET /workloads``): name, where it comes from, its params and metrics."""
    entries = _call(args, "GET", "/workloads")
    if args.json:
        _print(entries)
        return
    for entry in entries:
        origin = f"{entry['distribution']} {entry['version']}"
        if entry.get("error"):
            print(f"{entry['name']}  ({origin})  FAILED TO LOAD: {entry['error']}")  # noqa: T201
            continue
        print(f"{entry['name']}  ({origin})  {entry['description']}")  # noqa: T201
        if entry.get("unavailable"):
            print(f"    NOT AVAILABLE HERE: {entry['unavailable']}")  # noqa: T201
        for param in entry["params"]:
            default = "required" if param["required"] else f"default {param['default']!r}"
            print(f"    {param['name']}: {param['kind']}, {default}  {param['help']}")  # noqa: T201
        metrics = ", ".join(f"{m['name']} ({'max' if m['direction'] == 'maximize' else 'min'})"
                            for m in entry["metrics"])
        print(f"    metrics: {metrics}")  # noqa: T201
        probe = f"curvature probe: yes ({entry['loss_kind']})" if entry["loss_kind"] else "curvature probe: no"
        print(f"    {probe}; LR range test: yes")  # noqa: T201


def cmd_schedule_plot(args: argparse.Namespace) -> None:
    from phasetune.search_spaces import SpecError
    from phasetune.search_spaces.plot import plot_schedule

    schedule = json.loads(Path(args.schedule).read_text())
    try:
        plot_schedule(schedule, args.epochs, args.steps_per_epoch, path=args.output)
    except SpecError as err:
        sys.exit(f"phasetune: invalid schedule: {err}")
    print(f"phasetune: wrote {args.output}")  # noqa: T201


def cmd_probe(args: argparse.Namespace) -> None:
    """Run a regime probe over REST (``POST /probes``); ``--plot`` draws the range test's curve."""
    if args.plot and args.kind != "lr_range":
        sys.exit("phasetune: --plot draws the LR range test's curve; use it with `probe lr_range`")
    body = {"kind": args.kind, "workload": {"name": args.workload, "params": json.loads(args.params)},
            "seed": args.seed, "options": json.loads(args.options)}
    record = _call(args, "POST", "/probes", json=body)
    while record["status"] == "running":  # 202: it runs on the cluster; its record says when it is done
        time.sleep(0.5)
        record = _call(args, "GET", f"/probes/{record['id']}")
    if record["status"] == "failed":
        sys.exit(f"phasetune: probe {record['id']} failed: {record['error']}")
    result = record["result"]
    if args.kind == "curvature":
        print(f"phasetune: probe {record['id']}: lambda0 = {result['lambda0']:.6g}, "  # noqa: T201
              f"lr_crit = 2/lambda0 = {result['lr_crit']:.6g} ({result['iterations']} iterations)")
    else:
        print(f"phasetune: probe {record['id']}: lr_start = {result['lr_start']:.4g}, "  # noqa: T201
              f"lr_best = {result['lr_best']:.4g}, lr_div = {result['lr_div']:.4g} (diverged: {result['diverged']})")
    _print(record if args.json else {k: v for k, v in result.items() if k not in ("lrs", "losses")})
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        # A diverged run ends on a non-finite loss (stored as null): draw the finite part.
        points = [(lr, loss) for lr, loss in zip(result["lrs"], result["losses"]) if loss is not None]
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.plot([p[0] for p in points], [p[1] for p in points], color="black", lw=1.5, label="smoothed loss")
        for key, color in (("lr_start", "tab:green"), ("lr_best", "tab:blue"), ("lr_div", "tab:red")):
            ax.axvline(result[key], color=color, ls="--", lw=1, label=f"{key} = {result[key]:.3g}")
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel("smoothed training loss")
        ax.set_title(f"LR range test: {args.workload} (seed {args.seed})")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=100)
        plt.close(fig)
        print(f"phasetune: wrote {args.plot}")  # noqa: T201


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="phasetune", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the API (and a local Ray head and the Optuna dashboard)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--insecure", action="store_true",
                       help="serve without API tokens even beyond loopback (anyone who reaches the port can use it)")
    serve.set_defaults(func=cmd_serve)
    token = commands.add_parser("token", help="API tokens (on the database: PHASETUNE_STORAGE_URL)"
                                ).add_subparsers(dest="action", required=True)
    create = token.add_parser("create", help="create a token and print it (once)")
    create.add_argument("--scope", required=True, choices=["read", "write", "admin"])
    create.add_argument("--name", default="", help="what it is for")
    create.set_defaults(func=cmd_token_create)
    token.add_parser("list", help="id, scope, state, creation time and name of every token").set_defaults(
        func=cmd_token_list)
    revoke = token.add_parser("revoke", help="revoke a token by id")
    revoke.add_argument("id", type=int)
    revoke.set_defaults(func=cmd_token_revoke)
    commands.add_parser("migrate", help="create the database schema").set_defaults(func=cmd_migrate)
    commands.add_parser("stop-ray", help="stop the local Ray head `serve` started (only it: not `ray stop`)"
                        ).set_defaults(func=cmd_stop_ray)

    def client_command(name: str, func: Any, help: str, with_id: bool = True) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help)
        if with_id:
            sub.add_argument("id", type=int)
        sub.add_argument("--api", default=None, help="API base URL (default: $PHASETUNE_API_URL)")
        sub.set_defaults(func=func)
        return sub

    submit = client_command("submit", cmd_submit, "submit a study spec (JSON file)", with_id=False)
    submit.add_argument("spec")
    submit.add_argument("--name", help="override the spec's study name (names are unique)")
    submit.add_argument("--watch", action="store_true", help="show progress until the study ends")
    submit.add_argument("--interval", type=float, default=2.0)
    client_command("status", cmd_status, "a study's status, trial counts and best trial")
    client_command("list", cmd_list, "all studies", with_id=False)
    client_command("watch", cmd_watch, "a progress bar of finished trials").add_argument(
        "--interval", type=float, default=2.0)
    client_command("best", cmd_best, "the best trial and its schedule").add_argument(
        "--json", action="store_true", help="print only the schedule JSON (usable with search_spaces.attach)")
    client_command("stop", cmd_stop, "stop a study's trials")
    client_command("workloads", cmd_workloads, "the registered workloads: params, metrics, origin",
                   with_id=False).add_argument("--json", action="store_true", help="print the API's JSON")

    probe = client_command("probe", cmd_probe, "run a regime probe on a workload (POST /probes)", with_id=False)
    probe.add_argument("kind", choices=["curvature", "lr_range"])
    probe.add_argument("--workload", required=True, help="a workload name (ps10, digits, quadratic)")
    probe.add_argument("--params", default="{}", help="the workload's params as JSON")
    probe.add_argument("--options", default="{}", help="the probe's options as JSON (e.g. {\"steps\": 200})")
    probe.add_argument("--seed", type=int, default=0)
    probe.add_argument("--plot", help="lr_range only: draw smoothed loss against lr (log x) to this PNG")
    probe.add_argument("--json", action="store_true", help="print the whole record, curve included")

    schedule = commands.add_parser("schedule", help="schedule tools").add_subparsers(dest="tool", required=True)
    plot = schedule.add_parser("plot", help="draw lr and momentum against epochs")
    plot.add_argument("schedule", help="a concrete schedule JSON file")
    plot.add_argument("--epochs", type=int, required=True)
    plot.add_argument("--steps-per-epoch", type=int, required=True)
    plot.add_argument("-o", "--output", required=True)
    plot.set_defaults(func=cmd_schedule_plot)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
