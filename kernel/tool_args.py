"""What can be known about a tool step's arguments before the run: the literal view.

A step's `args` mix literal values with `$references` that only the run can fill in. The
literal view keeps every literal (with `$$` unescaped, as the tool will receive it) and puts
INTERPOLATED where a value depends on the run, so that a tool that declares its inputs (a
downstream MCP tool and its `inputSchema`) can refuse at load time what can never work: a
missing required argument, an unknown one, a literal of the wrong type.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from kernel.references import parse_template


class Interpolated:
    """The type of INTERPOLATED, the marker for a value filled in when the step runs."""

    def __repr__(self) -> str:
        return "INTERPOLATED"


INTERPOLATED: Final = Interpolated()


@dataclass(frozen=True, slots=True)
class ArgProblem:
    """One reason a step's arguments cannot be right. `field` is a dotted path into `args`
    (empty for the arguments as a whole)."""

    field: str
    message: str


# A tool's own check of a literal view: the problems it finds (none: nothing to object to).
ArgsCheck = Callable[[Mapping[str, Any]], list[ArgProblem]]


def literal_view(value: Any) -> Any:
    """`value` with each string that holds a reference replaced by INTERPOLATED."""
    if isinstance(value, str):
        parsed = parse_template(value)
        return parsed if isinstance(parsed, str) else INTERPOLATED
    if isinstance(value, Mapping):
        return {key: literal_view(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [literal_view(item) for item in value]
    return value


def holds_interpolated(value: Any) -> bool:
    if value is INTERPOLATED:
        return True
    if isinstance(value, Mapping):
        return any(holds_interpolated(item) for item in value.values())
    if isinstance(value, list):
        return any(holds_interpolated(item) for item in value)
    return False
