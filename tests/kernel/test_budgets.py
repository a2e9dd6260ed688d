"""Budgets are checked before every step and stop the run loudly, never silently overrun."""

from __future__ import annotations

from typing import Any

from kernel import ExecutionVM, Interrupt, InterruptType, ManualClock, Program, TraceStatus
from kernel.adapters import MockLLMAdapter
from tests.conftest import step_ids, tool


def noop(**_: Any) -> None:
    return None


async def test_next_step_self_loop_ends_budget_exceeded(run: Any) -> None:
    program = {"name": "p", "max_steps": 5, "steps": [tool("spin", tool="noop", next_step="spin")]}
    trace = await run(program, {"noop": noop})
    assert trace.status is TraceStatus.BUDGET_EXCEEDED
    assert len(trace.steps) == 5
    assert "max_steps=5" in (trace.error or "")


async def test_budget_counts_branch_targets(run: Any) -> None:
    program = {
        "name": "p",
        "max_steps": 2,
        "steps": [
            tool("a", tool="noop"),
            {"id": "c", "type": "condition", "condition": "true", "then": "target"},
            tool("target", tool="noop"),
        ],
    }
    trace = await run(program, {"noop": noop})
    assert trace.status is TraceStatus.BUDGET_EXCEEDED
    assert step_ids(trace) == ["a", "c"]
    assert "before step 'target'" in (trace.error or "")


async def test_budget_counts_parallel_children(run: Any) -> None:
    program = {
        "name": "p",
        "max_steps": 3,
        "steps": [
            {
                "id": "blk",
                "type": "parallel",
                "max_concurrency": 1,
                "parallel_steps": [tool(f"c{i}", tool="noop") for i in range(4)],
            }
        ],
    }
    trace = await run(program, {"noop": noop})
    assert trace.status is TraceStatus.BUDGET_EXCEEDED
    assert step_ids(trace) == ["c0", "c1"]  # the block itself is step 1


async def test_exactly_max_steps_is_allowed(run: Any) -> None:
    program = {"name": "p", "max_steps": 3, "steps": [tool(n, tool="noop") for n in "abc"]}
    trace = await run(program, {"noop": noop})
    assert trace.status is TraceStatus.SUCCESS


async def test_max_tokens_stops_before_the_next_step(run: Any) -> None:
    program = {
        "name": "p",
        "max_tokens": 5,
        "steps": [
            {"id": "ask", "type": "llm", "prompt": "one two three"},
            {"id": "ask_again", "type": "llm", "prompt": "four"},
        ],
    }
    trace = await run(program, llm=MockLLMAdapter("five six seven"))
    assert trace.status is TraceStatus.BUDGET_EXCEEDED
    assert step_ids(trace) == ["ask"]
    assert trace.total_tokens() == 6
    assert "max_tokens=5" in (trace.error or "")


async def test_stalled_loop_ends_stalled(run: Any) -> None:
    program = {
        "name": "p",
        "max_steps": 100,
        "max_stalled_steps": 4,
        "steps": [tool("poll", tool="same", next_step="poll")],
    }
    trace = await run(program, {"same": lambda: "still waiting"})
    assert trace.status is TraceStatus.STALLED
    assert len(trace.steps) == 5  # the first poll is new; the next four changed nothing


async def test_loop_that_makes_progress_is_not_stalled(run: Any) -> None:
    counter = iter(range(1000))
    program = {
        "name": "p",
        "max_steps": 20,
        "max_stalled_steps": 2,
        "steps": [tool("poll", tool="count", next_step="poll")],
    }
    trace = await run(program, {"count": lambda: next(counter)})
    assert trace.status is TraceStatus.BUDGET_EXCEEDED


async def test_max_duration_uses_the_clock_port() -> None:
    clock = ManualClock()

    def slow() -> None:
        clock.advance(4)

    program = Program.from_dict(
        {"name": "p", "max_duration_seconds": 10, "steps": [tool(n, tool="slow") for n in "abcd"]}
    )
    trace = await ExecutionVM(tools={"slow": slow}, clock=clock).run(program)
    assert trace.status is TraceStatus.BUDGET_EXCEEDED
    assert step_ids(trace) == ["a", "b", "c"]


async def test_on_interrupt_callback_is_awaited_before_the_run_stops() -> None:
    seen: list[tuple[InterruptType, str | None]] = []

    async def observe(interrupt: Interrupt) -> None:
        seen.append((interrupt.type, interrupt.step_id))

    program = Program.from_dict(
        {"name": "p", "max_steps": 1, "steps": [tool("a", tool="noop"), tool("b", tool="noop")]}
    )
    trace = await ExecutionVM(tools={"noop": noop}, on_interrupt=observe).run(program)
    assert trace.status is TraceStatus.BUDGET_EXCEEDED
    assert seen == [(InterruptType.BUDGET, "b")]


async def test_emit_interrupt_override_in_a_subclass_keeps_working() -> None:
    seen: list[str] = []

    class InstrumentedVM(ExecutionVM):
        async def _emit_interrupt(self, interrupt_type: InterruptType) -> None:
            seen.append(f"interrupt: {interrupt_type.value}")

    program = Program.from_dict(
        {"name": "p", "max_steps": 1, "steps": [tool("a", tool="noop"), tool("b", tool="noop")]}
    )
    await InstrumentedVM(tools={"noop": noop}).run(program)
    assert seen == ["interrupt: budget"]


async def test_failing_interrupt_observer_does_not_change_the_outcome() -> None:
    async def broken(_: Interrupt) -> None:
        raise RuntimeError("observer down")

    program = Program.from_dict(
        {"name": "p", "max_steps": 1, "steps": [tool("a", tool="noop"), tool("b", tool="noop")]}
    )
    trace = await ExecutionVM(tools={"noop": noop}, on_interrupt=broken).run(program)
    assert trace.status is TraceStatus.BUDGET_EXCEEDED
