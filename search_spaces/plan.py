"""A concrete schedule made runnable: phases over optimizer steps, each with its optimizer settings and family.

Every schedule is a plan: a single family is one phase spanning the whole run. The training loop and ``trace`` both
ask the plan for ``(phase, lr, momentum)`` at each step, so what is traced is what is trained.
"""

from __future__ import annotations

import bisect
import dataclasses
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from phasetune.search_spaces import segment
from phasetune.search_spaces.errors import SpecError
from phasetune.search_spaces.families import Horizon, LRSchedule
from phasetune.search_spaces.segment import OptimizerSettings
from phasetune.search_spaces.space import PHASES


@dataclass(frozen=True)
class Phase:
    start_step: int
    end_step: int  # exclusive
    optimizer: OptimizerSettings
    schedule: LRSchedule


@dataclass(frozen=True)
class StepValues:
    phase: int
    lr: float
    momentum: float | None


@dataclass(frozen=True)
class Plan:
    phases: tuple[Phase, ...]
    total_steps: int
    steps_per_epoch: int

    def phase_index(self, step: int) -> int:
        return max(0, bisect.bisect_right([p.start_step for p in self.phases], step) - 1)

    def __call__(self, step: int) -> StepValues:
        index = self.phase_index(step)
        phase = self.phases[index]
        point = phase.schedule(step - phase.start_step)
        momentum = point.momentum if point.momentum is not None else phase.optimizer.momentum
        return StepValues(index, point.lr, momentum)

    def observe(self, epoch: int, train_loss: float) -> bool:
        """Feed the mean training loss of ``epoch`` (0-based) to the phase that ran its last step."""
        last_step = min((epoch + 1) * self.steps_per_epoch, self.total_steps) - 1
        return self.phases[self.phase_index(last_step)].schedule.observe(epoch, train_loss)

    def decay_start_step(self) -> int:
        """Where the first phase boundary with a drop in LR is (0: none): the phases before it are large-step
        phases, the high-LR regime of the two-regimes paper that a later, smaller-step phase decays from."""
        for phase in self.phases[1:]:
            if self(phase.start_step).lr < self(phase.start_step - 1).lr:
                return phase.start_step
        return 0

    def in_large_step_phase(self, step: int) -> bool:
        """Step ``step`` is inside a large-step phase: before the first boundary with an LR drop, or in a
        loss-driven phase (AutoDecay) that has not yet decayed. Looking worse there than a small-step trial is by
        design, so early stopping never judges a trial there (``phasetune.workers.early_stopping``)."""
        return step < self.decay_start_step() or self.phases[self.phase_index(step)].schedule.awaiting_decay()

    def prefix_signatures(self, ends: Iterable[int]) -> dict[int, str | None]:
        """For each epoch count in ``ends``, what the first that many epochs train with, as a digest: every step's
        (phase, lr, momentum) and the optimizer settings of each phase begun in them, in one pass over the steps.
        Two plans with the same signature train those epochs alike (a checkpoint taken under one resumes under
        the other: ``phasetune.workers.checkpoints``). None where a phase begun in them is loss-driven (AutoDecay): its
        values depend on the losses, not on the plan alone."""
        wanted = sorted(set(ends))
        out: dict[int, str | None] = {}
        digest = hashlib.sha256()
        starts = {phase.start_step: phase for phase in self.phases}
        step, loss_driven = 0, False
        for epochs in wanted:
            end = min(epochs * self.steps_per_epoch, self.total_steps)
            while step < end and not loss_driven:
                if step in starts:
                    phase = starts[step]
                    loss_driven = phase.schedule.loss_driven()
                    digest.update(repr((phase.start_step, dataclasses.astuple(phase.optimizer))).encode())
                values = self(step)
                digest.update(repr((values.phase, values.lr, values.momentum)).encode())
                step += 1
            out[epochs] = None if loss_driven else digest.copy().hexdigest()
        return out

    def extra_attrs(self) -> dict[str, Any]:
        attrs: dict[str, Any] = {}
        for phase in self.phases:
            attrs.update(phase.schedule.extra_attrs())
        return attrs


def build_plan(concrete: Mapping[str, Any], epochs: int, steps_per_epoch: int) -> Plan:
    """Turn a concrete schedule (from ``space.sample`` or a user's JSON) into a plan over ``epochs`` epochs."""
    if epochs < 1 or steps_per_epoch < 1:
        raise SpecError(("epochs",), "epochs and steps_per_epoch must be >= 1")
    total = epochs * steps_per_epoch
    if concrete.get("family") == PHASES:
        segments = list(concrete["phases"])
        boundaries = [int(round(e * steps_per_epoch)) for e in concrete.get("transition_epochs", [])]
    else:
        segments, boundaries = [concrete], []
    starts = [0, *boundaries]
    ends = [*boundaries, total]
    if any(b <= a for a, b in zip(starts, ends)) or ends[-1] > total:
        raise SpecError(("transition_epochs",),
                        f"phase boundaries {boundaries} must increase within (0, {total}) steps")
    phases = []
    for i, (seg, start, end) in enumerate(zip(segments, starts, ends)):
        loc = ("phases", i) if concrete.get("family") == PHASES else ()
        family = segment.family_of(seg, loc, default="constant")
        try:
            schedule = segment.build(family.name, seg, Horizon(end - start, steps_per_epoch))
            settings = segment.optimizer_settings(seg)
        except SpecError as err:
            raise err.under(*loc) from None
        phases.append(Phase(start, end, settings, schedule))
    return Plan(tuple(phases), total, steps_per_epoch)
