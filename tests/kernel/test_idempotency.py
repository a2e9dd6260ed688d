"""Run idempotency keys and resume event ids: the same request never runs twice."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from kernel import (
    DuplicateEventError,
    ExecutionVM,
    IdempotencyError,
    ManualClock,
    Program,
    TraceStatus,
)
from tests.conftest import tool

PROGRAM = Program.from_dict({"name": "charge", "steps": [tool("charge", args={"n": "$n"})]})


def counting_vm(calls: list[int], clock: ManualClock | None = None, **kw: Any) -> ExecutionVM:
    async def charge(n: int) -> str:
        calls.append(n)
        await asyncio.sleep(0)
        return f"charged {n}"

    return ExecutionVM(tools={"charge": charge}, clock=clock or ManualClock(), **kw)


async def test_same_key_returns_the_same_trace_without_running_again() -> None:
    calls: list[int] = []
    vm = counting_vm(calls)
    first = await vm.run(PROGRAM, {"n": 1}, idempotency_key="order-1")
    again = await vm.run(PROGRAM, {"n": 1}, idempotency_key="order-1")
    assert again.trace_id == first.trace_id
    assert again.final_output == "charged 1"
    assert calls == [1]


async def test_concurrent_calls_with_one_key_run_once_and_share_the_result() -> None:
    calls: list[int] = []
    vm = counting_vm(calls)
    traces = await asyncio.gather(
        *(vm.run(PROGRAM, {"n": 7}, idempotency_key="k") for _ in range(5))
    )
    assert {t.trace_id for t in traces} == {traces[0].trace_id}
    assert all(t.status is TraceStatus.SUCCESS for t in traces)
    assert calls == [7]


async def test_same_key_with_another_context_is_an_error_that_says_so() -> None:
    vm = counting_vm([])
    await vm.run(PROGRAM, {"n": 1}, idempotency_key="order-1")
    with pytest.raises(IdempotencyError, match="another program or context"):
        await vm.run(PROGRAM, {"n": 2}, idempotency_key="order-1")


async def test_failed_run_is_returned_as_failed() -> None:
    def broken(n: int) -> None:
        raise RuntimeError("card declined")

    vm = ExecutionVM(tools={"charge": broken})
    first = await vm.run(PROGRAM, {"n": 1}, idempotency_key="k")
    again = await vm.run(PROGRAM, {"n": 1}, idempotency_key="k")
    assert first.status is again.status is TraceStatus.FAILED
    assert again.error == "step 'charge': RuntimeError: card declined"


async def test_keys_expire_after_the_retention_window() -> None:
    calls: list[int] = []
    clock = ManualClock()
    vm = counting_vm(calls, clock, key_retention_seconds=60)
    first = await vm.run(PROGRAM, {"n": 1}, idempotency_key="k")
    clock.advance(61)
    second = await vm.run(PROGRAM, {"n": 1}, idempotency_key="k")
    assert second.trace_id != first.trace_id
    assert calls == [1, 1]


async def test_duplicate_event_id_is_acknowledged_not_executed() -> None:
    ran: list[Any] = []
    program = Program.from_dict(
        {
            "name": "p",
            "steps": [tool("wait", tool="pending"), tool("after", args={"e": "$wait.output"})],
        }
    )
    vm = ExecutionVM(tools={"pending": lambda: "PENDING", "after": lambda e: ran.append(e)})
    trace = await vm.run(program)
    done = await vm.resume(trace.trace_id, {"paid": True}, event_id="evt_1")
    assert done.status is TraceStatus.SUCCESS
    with pytest.raises(DuplicateEventError, match="evt_1"):
        await vm.resume(trace.trace_id, {"paid": True}, event_id="evt_1")
    assert ran == [{"paid": True}]


async def test_concurrent_deliveries_of_one_event_resume_once() -> None:
    ran: list[Any] = []
    program = Program.from_dict(
        {
            "name": "p",
            "steps": [tool("wait", tool="pending"), tool("after", args={"e": "$wait.output"})],
        }
    )
    vm = ExecutionVM(tools={"pending": lambda: "PENDING", "after": lambda e: ran.append(e)})
    trace = await vm.run(program)
    results = await asyncio.gather(
        *(vm.resume(trace.trace_id, {"n": 1}, event_id="evt") for _ in range(5)),
        return_exceptions=True,
    )
    assert sum(not isinstance(r, BaseException) for r in results) == 1
    assert all(isinstance(r, DuplicateEventError) for r in results if isinstance(r, Exception))
    assert ran == [{"n": 1}]
