"""Pictures of a schedule: lr and momentum against epochs, phase boundaries marked.

``plot_schedule`` draws with matplotlib (``phasetune schedule plot``); ``plotly_schedule`` gives the same figure as
plotly (``optuna_dashboard.save_plotly_graph_object`` shows it on a study's page); ``upload_schedule_png`` attaches the
PNG to a trial as an Optuna artifact, which the dashboard shows on the trial. All read the plan, the training loop's
code path, so the picture is what the trial trained with (at most ``MAX_POINTS`` steps of it).
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from search_spaces.plan import build_plan

if TYPE_CHECKING:
    import matplotlib.figure
    import optuna
    import plotly.graph_objects
    from optuna.artifacts._protocol import ArtifactStore


MAX_POINTS = 4000  # a picture's resolution: enough for a figure, and its cost does not grow with the steps


def _series(schedule: Mapping[str, Any], epochs: int, steps_per_epoch: int) -> dict[str, Any]:
    """The schedule at every step, or at ``MAX_POINTS`` evenly spread steps plus each phase's first and last."""
    plan = build_plan(schedule, epochs, steps_per_epoch)
    if plan.total_steps <= MAX_POINTS:
        steps = list(range(plan.total_steps))
    else:
        edges = {s for p in plan.phases for s in (p.start_step, p.end_step - 1)}
        spread = {round(i * (plan.total_steps - 1) / (MAX_POINTS - 1)) for i in range(MAX_POINTS)}
        steps = sorted(spread | edges)
    values = [plan(step) for step in steps]
    momentum = [v.momentum for v in values]
    return {
        "epoch": [step / steps_per_epoch for step in steps],
        "lr": [v.lr for v in values],
        # Where the schedule leaves momentum alone there is nothing to draw (None becomes a gap).
        "momentum": momentum if any(m is not None for m in momentum) else None,
        "boundaries": [phase.start_step / steps_per_epoch for phase in plan.phases[1:]],
        "title": _title(schedule),
    }


def _title(schedule: Mapping[str, Any]) -> str:
    family = schedule.get("family", "?")
    if family == "phases":
        return "phases: " + " -> ".join(str(p.get("family", "constant")) for p in schedule.get("phases", []))
    return str(family)


def plot_schedule(schedule: Mapping[str, Any], epochs: int, steps_per_epoch: int,
                  path: str | Path | None = None) -> matplotlib.figure.Figure:
    """lr (top) and momentum (bottom) per optimizer step against epochs; saved to ``path`` if given."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    data = _series(schedule, epochs, steps_per_epoch)
    fig = Figure(figsize=(7, 5))
    ax_lr, ax_m = fig.subplots(2, 1, sharex=True)
    fig.subplots_adjust(left=0.12, right=0.97, top=0.93, bottom=0.1, hspace=0.1)  # fixed: a layout engine costs more
    ax_lr.plot(data["epoch"], data["lr"], color="tab:blue", linewidth=1.2)
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_title(data["title"])
    if data["momentum"] is not None:
        momentum = [float("nan") if m is None else m for m in data["momentum"]]
        ax_m.plot(data["epoch"], momentum, color="tab:orange", linewidth=1.2)
    else:
        ax_m.text(0.5, 0.5, "momentum: optimizer default", ha="center", va="center", transform=ax_m.transAxes)
    ax_m.set_ylabel("momentum")
    ax_m.set_xlabel("epoch")
    for ax in (ax_lr, ax_m):
        for boundary in data["boundaries"]:
            ax.axvline(boundary, color="grey", linestyle="--", linewidth=0.8)
        ax.grid(True, alpha=0.3)
    if path is not None:
        fig.savefig(path, dpi=100)
    return fig


def plotly_schedule(schedule: Mapping[str, Any], epochs: int, steps_per_epoch: int) -> plotly.graph_objects.Figure:
    """The same picture as a plotly figure (the Optuna dashboard shows plotly figures attached to a trial)."""
    from plotly.subplots import make_subplots

    data = _series(schedule, epochs, steps_per_epoch)
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08)
    fig.add_scatter(x=data["epoch"], y=data["lr"], name="lr", mode="lines", row=1, col=1)
    if data["momentum"] is not None:
        fig.add_scatter(x=data["epoch"], y=data["momentum"], name="momentum", mode="lines", row=2, col=1)
    for boundary in data["boundaries"]:
        fig.add_vline(x=boundary, line_dash="dash", line_color="grey")
    fig.update_yaxes(title_text="learning rate", row=1, col=1)
    fig.update_yaxes(title_text="momentum", row=2, col=1)
    fig.update_xaxes(title_text="epoch", row=2, col=1)
    fig.update_layout(title_text=data["title"], showlegend=False)
    return fig


def upload_schedule_png(trial: optuna.Trial | optuna.trial.FrozenTrial, schedule: Mapping[str, Any], epochs: int,
                        steps_per_epoch: int, artifact_store: ArtifactStore,
                        storage: optuna.storages.BaseStorage | None = None) -> str:
    """Attach the schedule's PNG to ``trial`` as an Optuna artifact (shown by optuna-dashboard); its artifact id."""
    from optuna.artifacts import upload_artifact

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "schedule.png"
        plot_schedule(schedule, epochs, steps_per_epoch, path)
        return upload_artifact(artifact_store=artifact_store, file_path=str(path), study_or_trial=trial,
                               storage=storage, mimetype="image/png")
