"""Statuses, spelled once and used everywhere: Python API, trace JSON, ledger rows, MCP, CLI."""

from __future__ import annotations

from enum import StrEnum


class TraceStatus(StrEnum):
    """Where a run is. RUNNING and SUSPENDED are live; the others are terminal (absorbing)."""

    RUNNING = "RUNNING"
    SUSPENDED = "SUSPENDED"
    SUCCESS = "SUCCESS"
    FAILED = "FAILED"
    BUDGET_EXCEEDED = "BUDGET_EXCEEDED"
    STALLED = "STALLED"
    CANCELLED = "CANCELLED"

    @property
    def is_terminal(self) -> bool:
        return self not in (TraceStatus.RUNNING, TraceStatus.SUSPENDED)


class StepStatus(StrEnum):
    """How one execution of a step ended. RESUMED records the event that ended a suspension."""

    SUCCESS = "SUCCESS"
    FAILED = "FAILED"
    SKIPPED = "SKIPPED"
    SUSPENDED = "SUSPENDED"
    RESUMED = "RESUMED"


class StepType(StrEnum):
    LLM = "llm"
    TOOL = "tool"
    CONDITION = "condition"
    PARALLEL = "parallel"
    WAIT = "wait"


class OnError(StrEnum):
    FAIL = "fail"
    SKIP = "skip"
    RETRY = "retry"


class OnTimeout(StrEnum):
    FAIL = "fail"
    FALLBACK = "fallback"


class OnSuspendTimeout(StrEnum):
    FAIL = "fail"
    CONTINUE = "continue"
