"""The phased-optimizer driver: the one thing that runs a plan on torch optimizers, step by step.

Before every optimizer step it writes the plan's lr and momentum into the param groups (``apply_to_optimizer``).
Where a phase starts it begins the phase's optimizer: fresh (the phase's type, weight decay and nesterov, an empty
state: momentum buffers and Adam moments gone, a new algorithm as in the two-regimes paper), or, where the phase
sets ``keep_optimizer_state`` and keeps the type, carried over with the new phase's static settings. The training
loop (``workers/train.py``) and ``attach`` (a user's own loop) both run schedules through it, so a schedule trains
the same in a study and outside it. ``state_dict``/``load_state_dict`` cover the position, the loss-driven
families' state and the optimizer's, so a checkpoint taken mid-phase resumes bit-identically.

A fresh optimizer of the type already running is the same object with its state cleared and every group's
hyperparameters set as constructing one for the phase sets them: for torch's SGD, Adam and AdamW that trains exactly
as a new one would, and it keeps the object a user's loop holds. Only a change of type needs a new object, which
only an owned optimizer can have.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch

from phasetune.search_spaces.families.base import LR_MAX, Stateful
from phasetune.search_spaces.plan import Plan, StepValues
from phasetune.search_spaces.segment import OptimizerSettings

OPTIMIZER_TYPES: dict[str, type[torch.optim.SGD] | type[torch.optim.Adam] | type[torch.optim.AdamW]] = {
    "sgd": torch.optim.SGD,
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
}
ADAM_BETA1 = 0.9  # torch's default beta1, where a phase leaves momentum unset


def apply_to_optimizer(optimizer: torch.optim.Optimizer, lr: float, momentum: float | None) -> None:
    """Write ``lr`` (times a group's ``lr_scale``, default 1) and, unless None, ``momentum`` into every param group.

    Momentum goes to ``momentum`` (SGD, RMSprop) or to ``betas[0]`` (Adam, AdamW: beta1 plays momentum's role,
    as in torch's ``OneCycleLR``). A group with neither key cannot take a momentum: that is a ValueError, not a
    silent no-op.
    """
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
        _check_lr(group)
        if momentum is None:
            continue
        if "betas" in group:
            group["betas"] = (momentum, *tuple(group["betas"])[1:])
        elif "momentum" in group:
            group["momentum"] = momentum
        else:
            raise ValueError(f"{type(optimizer).__name__} has no momentum or betas to set momentum {momentum} on")


class Diverged(ArithmeticError):
    """Training cannot go on; the message, which begins ``diverged: ``, is the trial's ``fail_reason``."""


def _check_lr(group: dict[str, Any]) -> None:
    """An lr the group's weights cannot take (beyond their dtype's largest number: torch would refuse to convert it
    at the step, with a RuntimeError) is a divergence. Only a schedule that grows its lr gets here: the spec bounds
    each lr by float32's largest (``LR_MAX``), but not a unit's scale or a multistep's gamma**k."""
    lr = group["lr"]
    if lr <= LR_MAX:  # every floating dtype takes it (NaN fails the comparison)
        return
    weights = group["params"][0] if group["params"] else None
    largest = torch.finfo(weights.dtype).max if weights is not None and weights.is_floating_point() else LR_MAX
    if not lr <= largest:
        raise Diverged(f"diverged: lr {lr:g} overflows the {weights.dtype if weights is not None else 'weights'} "
                       f"weights (at most {largest:g})")


def realised_momentum(optimizer: torch.optim.Optimizer) -> float | None:
    """The momentum the optimizer actually uses: SGD's ``momentum`` or Adam's beta1."""
    group = optimizer.param_groups[0]
    if "betas" in group:
        return float(group["betas"][0])
    return float(group["momentum"]) if "momentum" in group else None


def make_optimizer(settings: OptimizerSettings, params: Iterable[Any]) -> torch.optim.Optimizer:
    """A new optimizer of the phase's type (SGD where unnamed); lr and momentum are written before every step."""
    cls = OPTIMIZER_TYPES[settings.type_name]
    weight_decay = settings.weight_decay or 0.0
    if issubclass(cls, torch.optim.SGD):
        return cls(params, lr=0.0, momentum=settings.momentum or 0.0, nesterov=bool(settings.nesterov),
                   weight_decay=weight_decay)
    beta1 = ADAM_BETA1 if settings.momentum is None else settings.momentum
    return cls(params, lr=0.0, betas=(beta1, 0.999), weight_decay=weight_decay)


def _write_stated_settings(optimizer: torch.optim.Optimizer, settings: OptimizerSettings) -> None:
    """The weight decay (times a group's ``weight_decay_scale``, default 1) and nesterov the phase states (unstated
    ones stay the optimizer's), in every group."""
    for group in optimizer.param_groups:
        if settings.weight_decay is not None:
            if "weight_decay" not in group and settings.weight_decay:
                raise ValueError(f"{type(optimizer).__name__} has no weight_decay to set {settings.weight_decay} on")
            group["weight_decay"] = settings.weight_decay * group.get("weight_decay_scale", 1.0)
        if settings.nesterov is not None and "nesterov" in group:
            group["nesterov"] = settings.nesterov


def _refresh(optimizer: torch.optim.Optimizer, settings: OptimizerSettings) -> None:
    """Make ``optimizer`` what constructing it anew for ``settings`` would give: empty state, every group's
    hyperparameters (dampening, eps, amsgrad, ...) at the values such a construction sets."""
    optimizer.state.clear()
    fresh = make_optimizer(settings, [torch.zeros(1, requires_grad=True)]).param_groups[0]
    for group in optimizer.param_groups:
        group.update({key: value for key, value in fresh.items() if key != "params"})


def _groups(optimizer: torch.optim.Optimizer) -> list[dict[str, Any]]:
    """The optimizer's param groups for a new optimizer: their parameters and their own keys (scales, names), none
    of the old type's hyperparameters."""
    return [{key: value for key, value in group.items() if key == "params" or key not in optimizer.defaults}
            for group in optimizer.param_groups]


class PhasedOptimizer:
    """Runs ``plan`` on torch optimizers over ``params``; call ``prepare()`` before each optimizer step and
    ``advance()`` after it (``step()`` is the optimizer's step plus ``advance()``).

    Args:
        plan: the concrete schedule as a plan (``build_plan``).
        params: the parameters (or param groups) to optimize; the driver makes each phase's optimizer.
        optimizer: a user's optimizer to drive instead (``attach``). Every phase runs on it, so each phase that
            names an optimizer type must name this one's; the settings a phase states (weight decay, nesterov)
            are written into it, the rest stay as the user made them.
    """

    def __init__(self, plan: Plan, params: Iterable[Any] | None = None, *,
                 optimizer: torch.optim.Optimizer | None = None) -> None:
        if (params is None) == (optimizer is None):
            raise ValueError("give either params (the driver makes each phase's optimizer) or optimizer")
        self.plan = plan
        self.steps_done = 0
        self._adopted = optimizer is not None
        if optimizer is not None:
            _check_adoptable(plan, optimizer)
            self.optimizer: torch.optim.Optimizer = optimizer
        else:
            self.optimizer = make_optimizer(plan.phases[0].optimizer, params)  # type: ignore[arg-type]
        self._phase = -1  # none begun: the first prepare() begins the first phase

    @property
    def phase(self) -> int:
        """The index of the phase the current step runs in (-1 before the first ``prepare``)."""
        return self._phase

    def prepare(self) -> StepValues:
        """Set the optimizer up for step ``steps_done`` (beginning a phase where one starts); its values."""
        values = self.plan(self.steps_done)
        if values.phase != self._phase:
            self._begin(values.phase)
        apply_to_optimizer(self.optimizer, values.lr, values.momentum)
        return values

    def advance(self) -> None:
        """One optimizer step was taken."""
        self.steps_done += 1

    def step(self) -> None:
        """The optimizer's step with the values ``prepare()`` set, then ``advance()``."""
        self.optimizer.step()
        self.advance()

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def observe(self, epoch: int, train_loss: float) -> bool:
        """Feed a loss-driven family (AutoDecay) the epoch's mean training loss; False: it ends training."""
        return self.plan.observe(epoch, train_loss)

    def _begin(self, index: int) -> None:
        settings = self.plan.phases[index].optimizer
        if self._phase >= 0:  # a boundary; the first phase begins on the optimizer as made or given
            if self._adopted:  # the type never changes (checked at construction)
                if not settings.keep_state:
                    self.optimizer.state.clear()
            elif type(self.optimizer) is not OPTIMIZER_TYPES[settings.type_name]:
                self.optimizer = make_optimizer(settings, _groups(self.optimizer))  # a new type: nothing carries
            elif not settings.keep_state:
                _refresh(self.optimizer, settings)
        _write_stated_settings(self.optimizer, settings)
        self._phase = index

    def state_dict(self, *, include_optimizer: bool = True) -> dict[str, Any]:
        """Position, phase, loss-driven family states and (unless excluded) the optimizer's state_dict."""
        state: dict[str, Any] = {
            "steps_done": self.steps_done,
            "phase": self._phase,
            "families": [phase.schedule.state_dict() if isinstance(phase.schedule, Stateful) else None
                         for phase in self.plan.phases],
        }
        if include_optimizer:
            state["optimizer"] = self.optimizer.state_dict()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume where ``state`` was taken: an owned optimizer becomes that phase's type and takes the saved
        optimizer state (if saved); either way the phase's stated settings are written again."""
        for phase, family_state in zip(self.plan.phases, state["families"], strict=True):
            if family_state is not None:
                if not isinstance(phase.schedule, Stateful):
                    raise ValueError(f"state for a {phase.schedule.name} phase, which keeps none")
                phase.schedule.load_state_dict(family_state)
        self.steps_done = int(state["steps_done"])
        self._phase = int(state["phase"])
        if self._phase < 0:
            return  # taken before the first step: prepare() begins the first phase as usual
        settings = self.plan.phases[self._phase].optimizer
        if not self._adopted and type(self.optimizer) is not OPTIMIZER_TYPES[settings.type_name]:
            self.optimizer = make_optimizer(settings, _groups(self.optimizer))
        if "optimizer" in state:
            self.optimizer.load_state_dict(state["optimizer"])
        _write_stated_settings(self.optimizer, settings)


def _check_adoptable(plan: Plan, optimizer: torch.optim.Optimizer) -> None:
    """A user's optimizer runs every phase: each phase that names a type must name the optimizer's."""
    for i, phase in enumerate(plan.phases):
        name = phase.optimizer.name
        if name is not None and type(optimizer) is not OPTIMIZER_TYPES[name]:
            raise ValueError(
                f"phase {i} of the schedule runs {name!r} but the optimizer is {type(optimizer).__name__}: pass "
                "an optimizer of that type, or train with search_spaces.PhasedOptimizer(plan, model.parameters()), "
                "which makes each phase's own")
