"""Timers, deadlines, cancellation and recovery, against the in-memory journal.

(The same behaviour over the SQLite ledger, across real processes, is in tests/governance.)
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest

from kernel import (
    ExecutionVM,
    InMemoryJournal,
    ManualClock,
    Program,
    StepStatus,
    TraceStatus,
    VMError,
)
from tests.conftest import step_ids, tool


class Crash(BaseException):
    """Stands in for the process dying: nothing in the VM catches it."""


def waiting_program() -> Program:
    return Program.from_dict(
        {
            "name": "remind",
            "steps": [
                tool("start"),
                {"id": "sleep", "type": "wait", "seconds": 3600},
                tool("remind"),
            ],
        }
    )


async def test_wait_of_one_hour_completes_when_the_clock_advances() -> None:
    clock, journal, log = ManualClock(), InMemoryJournal(), []
    tools = {"start": lambda: log.append("start"), "remind": lambda: log.append("remind")}
    vm = ExecutionVM(tools=tools, journal=journal, clock=clock)
    trace = await vm.run(waiting_program())
    assert trace.status is TraceStatus.SUSPENDED
    assert trace.wake_at == clock.now() + 3600
    assert await vm.fire_due_timers() == []  # not due yet
    clock.advance(3599)
    assert await vm.fire_due_timers() == []
    clock.advance(1)
    # A restart in between: a new VM over the same journal holds no state of its own.
    restarted = ExecutionVM(tools=tools, journal=journal, clock=clock)
    [done] = await restarted.fire_due_timers()
    assert done.status is TraceStatus.SUCCESS
    assert step_ids(done) == ["start", "sleep", "sleep", "remind"]
    assert done.steps[2].output == {"timer": "fired", "wake_at": trace.wake_at}
    assert log == ["start", "remind"]
    assert await restarted.fire_due_timers() == []  # fires once


async def test_wait_until_an_absolute_time() -> None:
    clock = ManualClock(start=1_800_000_000.0)
    program = Program.from_dict(
        {
            "name": "p",
            "steps": [{"id": "until", "type": "wait", "until": "2027-01-15T08:00:00Z"}, tool("go")],
        }
    )
    vm = ExecutionVM(tools={"go": lambda: "went"}, clock=clock)
    trace = await vm.run(program)
    wake_at = datetime(2027, 1, 15, 8, tzinfo=UTC).timestamp()
    assert trace.wake_at == wake_at
    clock.advance(wake_at - clock.now() - 1)
    assert await vm.fire_due_timers() == []
    clock.advance(1)
    [done] = await vm.fire_due_timers()
    assert done.final_output == "went"


def test_wait_step_needs_exactly_one_of_seconds_or_until() -> None:
    from kernel import ProgramError

    with pytest.raises(ProgramError, match="a wait step needs 'seconds' or 'until'"):
        Program.from_dict({"name": "p", "steps": [{"id": "w", "type": "wait"}]})
    with pytest.raises(ProgramError, match="give a UTC offset"):
        Program.from_dict(
            {"name": "p", "steps": [{"id": "w", "type": "wait", "until": "2027-01-15T08:00:00"}]}
        )


def deadline_program(action: str) -> Program:
    return Program.from_dict(
        {
            "name": "approval",
            "steps": [
                tool("ask", tool="ask", suspend_timeout_seconds=60, on_suspend_timeout=action),
                tool("after", tool="after", args={"answer": "$ask.output"}),
            ],
        }
    )


async def test_suspension_past_its_deadline_fails_the_run() -> None:
    clock = ManualClock()
    vm = ExecutionVM(tools={"ask": lambda: "PENDING", "after": lambda answer: answer}, clock=clock)
    trace = await vm.run(deadline_program("fail"))
    clock.advance(61)
    [done] = await vm.fire_due_timers()
    assert done.status is TraceStatus.FAILED
    assert done.error == "step 'ask': no event within 60.0s"
    assert done.steps[-1].status is StepStatus.FAILED
    with pytest.raises(Exception, match="not suspended"):
        await vm.resume(trace.trace_id, {"approved": True})


async def test_suspension_past_its_deadline_can_continue_with_a_timeout_event() -> None:
    clock = ManualClock()
    vm = ExecutionVM(tools={"ask": lambda: "PENDING", "after": lambda answer: answer}, clock=clock)
    await vm.run(deadline_program("continue"))
    clock.advance(61)
    [done] = await vm.fire_due_timers()
    assert done.status is TraceStatus.SUCCESS
    assert done.final_output == {"timeout": True}


async def test_event_before_the_deadline_disarms_the_timer() -> None:
    clock = ManualClock()
    vm = ExecutionVM(tools={"ask": lambda: "PENDING", "after": lambda answer: answer}, clock=clock)
    trace = await vm.run(deadline_program("fail"))
    done = await vm.resume(trace.trace_id, {"approved": True})
    assert done.final_output == {"approved": True}
    clock.advance(120)
    assert await vm.fire_due_timers() == []


async def test_cancel_a_suspended_run() -> None:
    vm = ExecutionVM(tools={"ask": lambda: "PENDING", "after": lambda answer: answer})
    trace = await vm.run(deadline_program("fail"))
    cancelled = await vm.cancel(trace.trace_id, "customer withdrew")
    assert cancelled.status is TraceStatus.CANCELLED
    assert cancelled.error == "cancelled: customer withdrew"
    with pytest.raises(Exception, match="not suspended"):
        await vm.resume(trace.trace_id, {})


async def test_cancel_a_running_run_interrupts_the_step_at_its_next_await() -> None:
    started, finished = asyncio.Event(), []

    async def slow() -> str:
        started.set()
        await asyncio.sleep(3600)
        finished.append("slow")
        return "never"

    program = Program.from_dict({"name": "p", "steps": [tool("slow"), tool("after")]})
    vm = ExecutionVM(
        tools={"slow": slow, "after": lambda: finished.append("after")}, id_factory=lambda: "run-1"
    )
    run = asyncio.create_task(vm.run(program))
    await started.wait()
    cancelled = await vm.cancel("run-1", "operator stop")
    trace = await run  # the run's own caller gets the CANCELLED trace, not an exception
    assert trace is cancelled
    assert trace.status is TraceStatus.CANCELLED
    assert finished == []
    assert not run.cancelled()


async def test_cancel_of_an_unknown_or_finished_run_is_refused() -> None:
    vm = ExecutionVM(tools={"a": lambda: 1})
    trace = await vm.run(Program.from_dict({"name": "p", "steps": [tool("a")]}))
    with pytest.raises(VMError, match="cannot cancel"):
        await vm.cancel(trace.trace_id)


async def test_recover_reuses_completed_steps_and_reruns_the_one_in_flight() -> None:
    journal, calls = InMemoryJournal(), []
    crash = {"on": True}

    def step(name: str) -> Any:
        def _tool(idempotency_key: str) -> str:
            calls.append((name, idempotency_key))
            if name == "b" and crash["on"]:
                raise Crash()
            return name.upper()

        return _tool

    program = Program.from_dict({"name": "p", "steps": [tool(n) for n in "abc"]})
    tools = {n: step(n) for n in "abc"}
    with pytest.raises(Crash):
        await ExecutionVM(tools=tools, journal=journal, id_factory=lambda: "t1").run(program)
    crash["on"] = False
    [trace] = await ExecutionVM(tools=tools, journal=journal).recover()
    assert trace.status is TraceStatus.SUCCESS
    assert [r.output for r in trace.steps] == ["A", "B", "C"]
    assert calls == [("a", "t1:a:1"), ("b", "t1:b:1"), ("b", "t1:b:1"), ("c", "t1:c:1")]
    assert await ExecutionVM(tools=tools, journal=journal).recover() == []


async def test_recovered_run_hashes_match_an_uninterrupted_run() -> None:
    program = Program.from_dict(
        {
            "name": "p",
            "steps": [
                {
                    "id": "blk",
                    "type": "parallel",
                    "parallel_steps": [tool("x"), tool("y"), tool("z")],
                },
                tool("after"),
            ],
        }
    )
    clean = await ExecutionVM(
        tools={n: (lambda n=n: n) for n in ("x", "y", "z", "after")}, id_factory=lambda: "t"
    ).run(program)
    journal = InMemoryJournal()
    crash = {"on": True}

    def after() -> str:
        if crash["on"]:
            raise Crash()
        return "after"

    tools = {"x": lambda: "x", "y": lambda: "y", "z": lambda: "z", "after": after}
    with pytest.raises(Crash):
        await ExecutionVM(tools=tools, journal=journal, id_factory=lambda: "t").run(program)
    crash["on"] = False
    [recovered] = await ExecutionVM(tools=tools, journal=journal).recover()
    assert recovered.state_hashes == clean.state_hashes
