"""Budgets: checked before every step (branch targets and parallel children included)."""

from __future__ import annotations

from dataclasses import dataclass

from kernel.fsm import Event
from kernel.interrupts import InterruptType
from kernel.program import Program
from kernel.trace import Trace


@dataclass(frozen=True, slots=True)
class BudgetVerdict:
    event: Event
    interrupt: InterruptType
    detail: str


class BudgetGuard:
    """The budgets of one program. `for_program` returns None when there are none to check."""

    __slots__ = ("max_cost", "max_duration", "max_stalled", "max_steps", "max_tokens")

    def __init__(self, program: Program) -> None:
        self.max_steps = program.max_steps
        self.max_tokens = program.max_tokens
        self.max_cost = program.max_cost_usd
        self.max_duration = program.max_duration_seconds
        self.max_stalled = program.max_stalled_steps

    @classmethod
    def for_program(cls, program: Program) -> BudgetGuard | None:
        guard = cls(program)
        limits = (guard.max_steps, guard.max_tokens, guard.max_cost, guard.max_duration)
        if all(limit is None for limit in limits) and guard.max_stalled is None:
            return None
        return guard

    def check(self, trace: Trace, stalled: int, now: float) -> BudgetVerdict | None:
        """The first budget that does not allow one more step, or None."""
        metrics = trace.metrics
        if self.max_steps is not None and metrics.steps_executed >= self.max_steps:
            return _exceeded(f"max_steps={self.max_steps} reached")
        if self.max_tokens is not None and metrics.total_tokens > self.max_tokens:
            return _exceeded(f"max_tokens={self.max_tokens} exceeded ({metrics.total_tokens})")
        if self.max_cost is not None and metrics.cost_usd > self.max_cost:
            return _exceeded(f"max_cost_usd={self.max_cost} exceeded ({metrics.cost_usd:.6f})")
        if self.max_duration is not None and now - trace.started_at >= self.max_duration:
            return BudgetVerdict(
                Event.BUDGET_EXCEEDED,
                InterruptType.TIMEOUT,
                f"max_duration_seconds={self.max_duration} reached",
            )
        if self.max_stalled is not None and stalled >= self.max_stalled:
            return BudgetVerdict(
                Event.STALLED,
                InterruptType.STALL,
                f"{stalled} consecutive steps changed nothing (max_stalled_steps="
                f"{self.max_stalled})",
            )
        return None


def _exceeded(detail: str) -> BudgetVerdict:
    return BudgetVerdict(Event.BUDGET_EXCEEDED, InterruptType.BUDGET, detail)
