"""How a tool asks the runtime to suspend the run until an external event resumes it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

PENDING = "PENDING"
"""Reserved sentinel: a top-level tool returning exactly this string suspends the run."""


@dataclass(frozen=True, slots=True)
class Suspend:
    """Return `Suspend(reason=...)` from a tool to suspend with a reason recorded in the trace."""

    reason: str = ""


def suspension_reason(value: Any) -> str | None:
    """The reason if `value` asks for suspension, else None."""
    if isinstance(value, Suspend):
        return value.reason or PENDING
    if type(value) is str and value == PENDING:
        return PENDING
    return None
