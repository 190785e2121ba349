"""The one error a study spec can raise: it names the offending field."""

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
        return SpecError((*prefix, *self.loc), self.msg)
