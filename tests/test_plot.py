"""Schedule pictures: a PNG via matplotlib, and one via Pillow attached to a trial for the Optuna dashboard."""

from __future__ import annotations

from pathlib import Path

import optuna

from phasetune.search_spaces.plot import plot_schedule, upload_schedule_png

PHASES = {"family": "phases", "transition_epochs": [3],
          "phases": [{"lr": 0.5, "momentum": 0.0}, {"family": "cosine", "lr": 0.01, "momentum": 0.9}]}


def test_plot_writes_a_png_with_phase_boundaries(tmp_path: Path) -> None:
    out = tmp_path / "schedule.png"
    fig = plot_schedule(PHASES, 6, 10, out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ax_lr, ax_m = fig.axes
    assert [line.get_xdata()[0] for line in ax_lr.lines[1:]] == [3.0]  # the boundary, in epochs
    assert list(ax_lr.lines[0].get_ydata()[:2]) == [0.5, 0.5] and len(ax_m.lines) == 2


def test_plot_without_momentum() -> None:
    fig = plot_schedule({"family": "cosine", "lr": 0.1}, 3, 4)
    assert len(fig.axes[1].lines) == 0 and fig.axes[1].texts


def test_png_is_attached_to_a_trial(tmp_path: Path) -> None:
    store = optuna.artifacts.FileSystemArtifactStore(str(tmp_path))
    study = optuna.create_study()
    trial = study.ask()
    artifact_id = upload_schedule_png(trial, PHASES, 6, 10, store)
    (meta,) = optuna.artifacts.get_all_artifact_meta(trial)
    assert meta.artifact_id == artifact_id and meta.mimetype == "image/png"
    assert (tmp_path / artifact_id).read_bytes()[:4] == b"\x89PNG"


def test_a_long_schedules_picture_costs_what_a_short_ones_does() -> None:
    """100,000 epochs are drawn from MAX_POINTS steps (plus the phases' edges), not from 3.2 million."""
    from phasetune.search_spaces.plot import MAX_POINTS, _series

    data = _series(PHASES | {"transition_epochs": [30_000]}, 100_000, 32)
    assert MAX_POINTS <= len(data["lr"]) <= MAX_POINTS + 4
    assert data["epoch"][0] == 0 and data["epoch"][-1] == (100_000 * 32 - 1) / 32
    assert 30_000.0 in data["epoch"] and data["lr"][data["epoch"].index(30_000.0)] == 0.01  # phase 2's first step


def test_the_trial_picture_draws_lr_and_momentum_where_they_are() -> None:
    """The per-trial artifact (Pillow): the lr line in the top panel, momentum below only where it is set."""
    import io

    from PIL import Image

    from phasetune.search_spaces.plot import schedule_png

    def colours(png: bytes, top: bool) -> set:
        image = Image.open(io.BytesIO(png)).convert("RGB")
        half = image.crop((0, 0, image.width, image.height // 2) if top else (0, image.height // 2, image.width,
                                                                                image.height))
        return {colour for _, colour in half.getcolors(maxcolors=1 << 20)}

    with_momentum = schedule_png(PHASES, 6, 10)
    assert with_momentum[:4] == b"\x89PNG"
    assert (31, 119, 180) in colours(with_momentum, top=True) and (255, 127, 14) in colours(with_momentum, top=False)
    without = schedule_png({"family": "cosine", "lr": 0.1}, 3, 4)
    assert (255, 127, 14) not in colours(without, top=False)
