"""Interrupts: the moments a run stops or pauses for a reason other than its own steps."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum


class InterruptType(StrEnum):
    BUDGET = "budget"
    STALL = "stall"
    TIMEOUT = "timeout"
    SUSPEND = "suspend"


@dataclass(frozen=True, slots=True)
class Interrupt:
    type: InterruptType
    trace_id: str
    step_id: str | None
    detail: str


InterruptCallback = Callable[[Interrupt], Awaitable[None]]
