"""The finite-state machine: the only place that decides a run's status and where control goes.

RUNNING   --step done (success/skip)-->  RUNNING
RUNNING   --step failed-------------->  FAILED   (conditions that cannot be evaluated fail
                                                  closed, whatever on_error says)
RUNNING   --tool asked to suspend---->  SUSPENDED
RUNNING   --budget exceeded---------->  BUDGET_EXCEEDED
RUNNING   --stalled------------------>  STALLED
RUNNING   --no next step------------->  SUCCESS
SUSPENDED --resumed------------------>  RUNNING
terminal  --anything----------------->  (refused: terminal states absorb)
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from kernel.compiler import CompiledStep
from kernel.errors import VMError
from kernel.statuses import StepType, TraceStatus


class Event(StrEnum):
    STEP_DONE = "step_done"
    STEP_FAILED = "step_failed"
    SUSPEND = "suspend"
    RESUME = "resume"
    BUDGET_EXCEEDED = "budget_exceeded"
    STALLED = "stalled"
    END = "end"
    CANCEL = "cancel"
    EXPIRE = "expire"


_R, _S = TraceStatus.RUNNING, TraceStatus.SUSPENDED
TRANSITIONS: dict[tuple[TraceStatus, Event], TraceStatus] = {
    (_R, Event.STEP_DONE): _R,
    (_R, Event.STEP_FAILED): TraceStatus.FAILED,
    (_R, Event.SUSPEND): _S,
    (_R, Event.BUDGET_EXCEEDED): TraceStatus.BUDGET_EXCEEDED,
    (_R, Event.STALLED): TraceStatus.STALLED,
    (_R, Event.END): TraceStatus.SUCCESS,
    (_R, Event.CANCEL): TraceStatus.CANCELLED,
    (_S, Event.RESUME): _R,
    (_S, Event.EXPIRE): TraceStatus.FAILED,
    (_S, Event.CANCEL): TraceStatus.CANCELLED,
}


def transition(status: TraceStatus, event: Event) -> TraceStatus:
    try:
        return TRANSITIONS[status, event]
    except KeyError:
        raise VMError(f"illegal transition: {event.value} in state {status.value}") from None


def successor(node: CompiledStep, output: Any) -> str | None:
    """The next step on the real control path after `node` produced `output` (None: the end)."""
    if node.type is StepType.CONDITION:
        return node.then_target if output else node.else_target
    return node.successor
