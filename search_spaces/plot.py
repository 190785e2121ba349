"""Pictures of a schedule: lr and momentum against epochs, phase boundaries marked.

``plot_schedule`` draws with matplotlib (``phasetune schedule plot``); ``upload_schedule_png`` attaches
``schedule_png``'s picture (Pillow: cheap enough for every trial) to a trial as an Optuna artifact, which the
dashboard shows on the trial. All read the plan, the training loop's
code path, so the picture is what the trial trained with (at most ``MAX_POINTS`` steps of it).
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from phasetune.search_spaces.plan import build_plan

if TYPE_CHECKING:
    import matplotlib.figure
    import optuna
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


def upload_schedule_png(trial: optuna.Trial | optuna.trial.FrozenTrial, schedule: Mapping[str, Any], epochs: int,
                        steps_per_epoch: int, artifact_store: ArtifactStore,
                        storage: optuna.storages.BaseStorage | None = None) -> str:
    """Attach the schedule's PNG to ``trial`` as an Optuna artifact (shown by optuna-dashboard); its artifact id.

    Drawn by ``schedule_png`` (Pillow), not matplotlib: every trial gets one, on the driver, and matplotlib's import
    and drawing cost the search about 40% of the driver's CPU on a 2-core machine; Pillow's cost a few ms."""
    from optuna.artifacts import upload_artifact

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "schedule.png"
        path.write_bytes(schedule_png(schedule, epochs, steps_per_epoch))
        return upload_artifact(artifact_store=artifact_store, file_path=str(path), study_or_trial=trial,
                               storage=storage, mimetype="image/png")


_SIZE, _LEFT, _RIGHT, _TOP, _BOTTOM, _GAP = (700, 480), 78, 16, 28, 26, 22
_BLUE, _ORANGE, _GREY, _INK = (31, 119, 180), (255, 127, 14), (150, 150, 150), (40, 40, 40)


def schedule_png(schedule: Mapping[str, Any], epochs: int, steps_per_epoch: int) -> bytes:
    """The ``plot_schedule`` picture's content (lr above momentum against epochs, phase boundaries dashed) as PNG
    bytes, drawn with Pillow: a thumbnail for the dashboard, cheap enough to draw for every trial."""
    import io

    from PIL import Image, ImageDraw

    data = _series(schedule, epochs, steps_per_epoch)
    image = Image.new("RGB", _SIZE, "white")
    draw = ImageDraw.Draw(image)
    draw.text((_LEFT, 8), data["title"], fill=_INK)
    height = (_SIZE[1] - _TOP - _BOTTOM - _GAP) // 2
    x_max = max(data["epoch"][-1], 1e-12)
    for row, (name, values, colour) in enumerate((("learning rate", data["lr"], _BLUE),
                                                  ("momentum", data["momentum"], _ORANGE))):
        top = _TOP + row * (height + _GAP)
        box = (_LEFT, top, _SIZE[0] - _RIGHT, top + height)
        draw.rectangle(box, outline=_INK)
        draw.text((6, top + height // 2 - 6), name, fill=_INK)
        for boundary in data["boundaries"]:
            x = _LEFT + (box[2] - _LEFT) * boundary / x_max
            for y in range(top, top + height, 8):
                draw.line([(x, y), (x, min(y + 4, top + height))], fill=_GREY)
        points = [(e, v) for e, v in zip(data["epoch"], values or []) if v is not None]
        if not points:
            draw.text((_LEFT + 10, top + height // 2 - 6), "optimizer default", fill=_INK)
            continue
        smallest, largest = min(v for _, v in points), max(v for _, v in points)
        span = (largest - smallest) or abs(largest) or 1.0
        low, high = smallest - 0.05 * span, largest + 0.05 * span  # a margin inside the box
        for value in (smallest, largest):
            y = top + height - height * (value - low) / (high - low)
            draw.line([(_LEFT - 3, y), (_LEFT, y)], fill=_INK)
            draw.text((_LEFT - 5, y), f"{value:.3g}", fill=_INK, anchor="rm")
        xy = [(_LEFT + (box[2] - _LEFT) * e / x_max, top + height - height * (v - low) / (high - low))
              for e, v in points]
        draw.line(xy if len(xy) > 1 else xy * 2, fill=colour, width=2)
    bottom = _SIZE[1] - _BOTTOM
    draw.text((_LEFT, bottom + 4), "0", fill=_INK)
    draw.text((_SIZE[0] - _RIGHT, bottom + 4), f"{data['epoch'][-1]:.4g} epochs", fill=_INK, anchor="ra")
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()
