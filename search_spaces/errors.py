"""The errors a study spec can raise: each names the offending field."""

from __future__ import annotations

from collections.abc import Sequence

Loc = tuple[str | int, ...]


class SpecError(ValueError):
    """An invalid study spec. ``loc`` is the path to the bad field, e.g. ``("schedule", "phases", 1, "lr", "low")``."""

    def __init__(self, loc: Sequence[str | int], msg: str) -> None:
        self.loc: Loc = tuple(loc)
        self.msg = msg
        super().__init__(f"{'.'.join(str(p) for p in self.loc)}: {msg}")

    def under(self, *prefix: str | int) -> SpecError:
        """The same error, located under ``prefix`` (callers validate sub-specs with relative paths)."""
        return type(self)((*prefix, *self.loc), self.msg)


class RuleError(SpecError):
    """A spec that breaks a rule the published JSON Schema cannot state: across fields (``low <= high``), or
    against the study, the workload or the machine (transition epochs within the study's epochs, a duration of at
    least one of the workload's steps, a data path that exists). Every other SpecError is one the schema states
    too, so a request the schema accepts is refused only for a RuleError."""

    @classmethod
    def of(cls, err: SpecError) -> RuleError:
        return cls(err.loc, err.msg)
