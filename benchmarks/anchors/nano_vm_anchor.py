"""llm-nano-vm anchor (run inside benchmarks/.venvs/nano_vm): workloads 1 and 2.

llm-nano-vm's API, read from its installed source (0.8.9): `Program.from_dict(dict)`,
`ExecutionVM(llm, tools=...)` (no llm is needed by tool/condition programs: None),
`await vm.run(program, context=...)` -> Trace with `.status` and `.steps`. It keeps everything in
memory (suspended runs in an InMemoryCursorRepository); it has no durable journal.
"""

from __future__ import annotations

import asyncio
from importlib import metadata
from typing import Any

import bench_common as common
from nano_vm import ExecutionVM, Program, TraceStatus

TOOLS = {"noop": common.noop}


def versions() -> dict[str, str]:
    return {name: metadata.version(name) for name in ("llm-nano-vm", "pydantic")}


def kernel(spec: dict[str, Any]) -> dict[str, Any]:
    runs, concurrency = int(spec["runs"]), int(spec["concurrency"])
    program = Program.from_dict(common.kernel_program())
    vm = ExecutionVM(None, tools=TOOLS)  # type: ignore[arg-type]
    context = common.KERNEL_CONTEXT
    bad: list[str] = []

    async def one(_: int) -> None:
        trace = await vm.run(program, context=context)
        if trace.status != TraceStatus.SUCCESS or len(trace.steps) != common.KERNEL_STEPS:
            bad.append(f"{trace.status} after {len(trace.steps)} steps: {trace.error}")

    async def measure() -> float:
        # Warm-up, as for every system: one batch through the same driver.
        await common.run_bounded(min(concurrency, runs), concurrency, one)
        with common.Stopwatch() as watch:
            await common.run_bounded(runs, concurrency, one)
        return watch.seconds

    seconds = asyncio.run(measure())
    if bad:
        raise RuntimeError(f"{len(bad)} runs did not execute 5 steps: {bad[0]}")
    return {"seconds": seconds, "runs": runs, "steps_per_run": common.KERNEL_STEPS}


def long_horizon(spec: dict[str, Any]) -> dict[str, Any]:
    steps = int(spec["steps"])
    rss_before = common.peak_rss_kib()
    data = common.linear_program(steps)
    vm = ExecutionVM(None, tools=TOOLS)  # type: ignore[arg-type]
    with common.Stopwatch() as load:
        program = Program.from_dict(data)
    with common.Stopwatch() as run:
        trace = asyncio.run(vm.run(program))
    if trace.status != TraceStatus.SUCCESS or len(trace.steps) != steps:
        raise RuntimeError(f"{trace.status} after {len(trace.steps)} of {steps} steps")
    return {
        "load_seconds": load.seconds,
        "run_seconds": run.seconds,
        "seconds": load.seconds + run.seconds,
        "steps": steps,
        "rss_before_kib": rss_before,
        "rss_kib": common.peak_rss_kib(),
    }


if __name__ == "__main__":
    common.main({"kernel": kernel, "long_horizon": long_horizon}, versions)
