"""Parallel blocks: children run concurrently, bounded by max_concurrency, in dependency order.

Each child honours its own on_error (inherited from the block when unset), so a retry re-runs
only the children that failed. Every child's record is kept, also on failure; records are added
to the trace in the block's deterministic (topological, then declaration) order after the block
finishes, so the state hashes do not depend on which child happened to finish first.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from kernel.budgets import BudgetVerdict
from kernel.compiler import CompiledStep
from kernel.state import RunState
from kernel.statuses import StepStatus
from kernel.steps import Runtime, _record, execute_call
from kernel.trace import StepRecord

CheckBudget = Callable[[], BudgetVerdict | None]


ChildExecutor = Callable[[CompiledStep, RunState, Runtime], Awaitable[StepRecord]]


async def _execute_child(child: CompiledStep, state: RunState, rt: Runtime) -> StepRecord:
    return await execute_call(child, state, rt, top_level=False)


async def execute_block(
    node: CompiledStep,
    state: RunState,
    rt: Runtime,
    check_budget: CheckBudget,
    execute: ChildExecutor = _execute_child,
) -> tuple[list[StepRecord], StepRecord | None, BudgetVerdict | None]:
    """Run the block; returns (child records in order, the block's record, budget verdict).

    When a budget stops the block, children not yet started never run and there is no block
    record; the verdict says why.
    """
    started = rt.clock.now()
    limit = node.step.max_concurrency or len(node.children)
    semaphore = asyncio.Semaphore(limit)
    done = {child.id: asyncio.Event() for child in node.children}
    records: dict[str, StepRecord] = {}
    verdicts: list[BudgetVerdict] = []
    metrics = state.trace.metrics

    async def run_child(child: CompiledStep) -> None:
        recorded = state.recorded_children.get(child.id)
        if recorded is not None:  # recovery: this child completed before the crash
            records[child.id] = recorded
            done[child.id].set()
            return
        try:
            for dep in child.step.depends_on or ():
                await done[dep].wait()
            failed = [d for d in child.step.depends_on or () if _did_not_succeed(records.get(d))]
            if failed:
                now = rt.clock.now()
                records[child.id] = _record(
                    child,
                    StepStatus.SKIPPED,
                    None,
                    f"step '{child.id}': not run because dependency '{failed[0]}' failed",
                    0,
                    now,
                    now,
                )
                return
            async with semaphore:
                verdict = verdicts[0] if verdicts else check_budget()
                if verdict is not None:
                    verdicts.append(verdict)
                    return
                metrics.steps_executed += 1
                record = await execute(child, state, rt)
                records[child.id] = record
                state.publish(record)  # visible to dependants before the block ends
        finally:
            done[child.id].set()

    await asyncio.gather(*(run_child(child) for child in node.children))
    ordered = [records[c.id] for c in node.children if c.id in records]
    if verdicts:
        return ordered, None, verdicts[0]
    failures = [r for r in ordered if r.status is StepStatus.FAILED]
    error = None
    if failures:
        error = f"parallel block '{node.id}': {len(failures)} step(s) failed: " + "; ".join(
            r.error or r.step_id for r in failures
        )
    block = _record(
        node,
        StepStatus.FAILED if failures else StepStatus.SUCCESS,
        None if failures else {r.step_id: r.output for r in ordered},
        error,
        1,
        started,
        rt.clock.now(),
    )
    return ordered, block, None


def _did_not_succeed(record: StepRecord | None) -> bool:
    return (
        record is None
        or record.status is StepStatus.FAILED
        or (record.status is StepStatus.SKIPPED and record.attempts == 0)
    )
