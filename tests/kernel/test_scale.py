"""Long runs: linear cost, no recursion limits, and a fair share of the event loop."""

from __future__ import annotations

import asyncio
import time
import tracemalloc
import weakref
from typing import Any

from kernel import ExecutionVM, Program, TraceStatus
from tests.conftest import tool


def linear(n: int, **fields: Any) -> Program:
    return Program.from_dict(
        {"name": "long", "steps": [tool(f"s{i}", tool="noop") for i in range(n)], **fields}
    )


async def test_ten_thousand_step_linear_program_runs() -> None:
    trace = await ExecutionVM(tools={"noop": lambda: None}).run(linear(10_000))
    assert trace.status is TraceStatus.SUCCESS
    assert len(trace.steps) == len(trace.state_hashes) == trace.metrics.steps_executed == 10_000


async def test_memory_grows_linearly_with_run_length() -> None:
    vm = ExecutionVM(tools={"noop": lambda: None})

    async def peak(n: int) -> int:
        program = linear(n)
        tracemalloc.start()
        await vm.run(program)
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return top

    small, large = await peak(1_000), await peak(8_000)
    # Linear: 8x the steps costs about 8x the memory, far from the 64x of quadratic copying.
    assert large < small * 12


async def test_sync_tool_loop_does_not_starve_other_tasks() -> None:
    def busy() -> None:
        end = time.perf_counter() + 0.0005
        while time.perf_counter() < end:
            pass

    ticks = 0
    stop = asyncio.Event()

    async def heartbeat() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            await asyncio.sleep(0)

    beat = asyncio.create_task(heartbeat())
    program = Program.from_dict(
        {"name": "spin", "max_steps": 400, "steps": [tool("spin", tool="busy", next_step="spin")]}
    )
    trace = await ExecutionVM(tools={"busy": busy}).run(program)
    stop.set()
    await beat
    assert trace.status is TraceStatus.BUDGET_EXCEEDED
    # 400 steps of 0.5 ms of blocking work: the VM must have let the heartbeat run many times.
    assert ticks >= 20


async def test_async_timeout_of_another_task_fires_during_a_sync_loop() -> None:
    def busy() -> None:
        end = time.perf_counter() + 0.001
        while time.perf_counter() < end:
            pass

    program = Program.from_dict(
        {"name": "spin", "max_steps": 300, "steps": [tool("spin", tool="busy", next_step="spin")]}
    )
    run = asyncio.create_task(ExecutionVM(tools={"busy": busy}).run(program))
    await asyncio.sleep(0.02)
    # This task's timer fired while the 300 ms run was still going: the run did not hold the
    # loop until it finished.
    assert not run.done()
    trace = await run
    assert trace.status is TraceStatus.BUDGET_EXCEEDED


async def test_a_long_lived_vm_keeps_no_finished_run_its_caller_let_go() -> None:
    vm = ExecutionVM(tools={"noop": lambda: None})
    program = linear(3)
    refs = [weakref.ref(await vm.run(program)) for _ in range(100)]
    assert all(ref() is None for ref in refs)  # freed as soon as the caller dropped them
    keyed = await vm.run(program, idempotency_key="kept")
    kept = weakref.ref(keyed)
    del keyed
    assert kept() is not None  # a later call with the key gets it back
    assert (await vm.run(program, idempotency_key="kept")).trace_id == kept().trace_id  # type: ignore[union-attr]
