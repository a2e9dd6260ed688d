"""Durable timers: `wait` steps and suspension deadlines.

A timer is only data on the suspended trace (`wake_at`), so it lives wherever the journal keeps
suspended runs and survives restarts. The VM's `fire_due_timers()` (run periodically by the
gateway, or by a test after advancing its clock) acts on those that are due.
"""

from __future__ import annotations

from typing import Any

from kernel.compiler import CompiledStep
from kernel.statuses import OnSuspendTimeout, StepType


def wait_until(node: CompiledStep, now: float) -> float:
    """When a `wait` step started at `now` wakes up."""
    step = node.step
    if step.until is not None:
        return step.until.timestamp()
    assert step.seconds is not None
    return now + step.seconds


def deadline(node: CompiledStep, now: float) -> float | None:
    """When a suspension at `node` (started `now`) expires, if it can."""
    timeout = node.step.suspend_timeout_seconds
    return None if timeout is None else now + timeout


def timer_event(node: CompiledStep, wake_at: float) -> Any | None:
    """The event a due timer resumes with, or None when the deadline fails the run instead."""
    if node.type is StepType.WAIT:
        return {"timer": "fired", "wake_at": wake_at}
    if node.step.on_suspend_timeout is OnSuspendTimeout.CONTINUE:
        return {"timeout": True}
    return None
