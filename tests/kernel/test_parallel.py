"""Parallel blocks: concurrency bound, per-child policies, dependency order, full records."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from kernel import ProgramError, StepStatus, TraceStatus
from tests.conftest import step_ids, tool


def block(children: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
    return {
        "name": "p",
        "steps": [{"id": "blk", "type": "parallel", "parallel_steps": children, **fields}],
    }


async def test_children_run_concurrently_bounded_by_max_concurrency(run: Any) -> None:
    active = 0
    peak = 0

    async def work() -> str:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0.01)
        active -= 1
        return "done"

    trace = await run(
        block([tool(f"c{i}", tool="work") for i in range(6)], max_concurrency=2), {"work": work}
    )
    assert trace.status is TraceStatus.SUCCESS
    assert peak == 2
    assert trace.final_output == {f"c{i}": "done" for i in range(6)}


async def test_children_outputs_are_readable_after_the_block(run: Any) -> None:
    program = block([tool("w", tool="weather", output_key="forecast"), tool("n", tool="news")])
    program["steps"].append(tool("summary", tool="echo", args={"f": "$forecast", "n": "$n"}))
    tools = {"weather": lambda: "sun", "news": lambda: ["x"], "echo": lambda **k: k}
    trace = await run(program, tools)
    assert trace.final_output == {"f": "sun", "n": ["x"]}


async def test_block_on_error_skip_gives_none_for_failed_children(run: Any) -> None:
    def broken() -> None:
        raise ValueError("feed down")

    trace = await run(
        block([tool("w", tool="ok"), tool("n", tool="broken")], on_error="skip"),
        {"ok": lambda: 1, "broken": broken},
    )
    assert trace.status is TraceStatus.SUCCESS
    assert trace.final_output == {"w": 1, "n": None}
    assert trace.step("n").status is StepStatus.SKIPPED


async def test_every_childs_record_is_kept_when_the_block_fails(run: Any) -> None:
    def broken() -> None:
        raise ValueError("down")

    trace = await run(
        block([tool("a", tool="ok"), tool("b", tool="broken"), tool("c", tool="ok")]),
        {"ok": lambda: 1, "broken": broken},
    )
    assert trace.status is TraceStatus.FAILED
    assert step_ids(trace) == ["a", "b", "c", "blk"]
    assert [r.status for r in trace.steps[:3]] == [
        StepStatus.SUCCESS,
        StepStatus.FAILED,
        StepStatus.SUCCESS,
    ]
    assert "step 'b': ValueError: down" in (trace.error or "")


async def test_retry_reruns_only_the_failed_children(run: Any) -> None:
    calls = {"good": 0, "flaky": 0}

    def good() -> str:
        calls["good"] += 1
        return "g"

    def flaky() -> str:
        calls["flaky"] += 1
        if calls["flaky"] < 3:
            raise ConnectionError("retry me")
        return "f"

    trace = await run(
        block([tool("g", tool="good"), tool("f", tool="flaky")], on_error="retry"),
        {"good": good, "flaky": flaky},
    )
    assert trace.status is TraceStatus.SUCCESS
    assert calls == {"good": 1, "flaky": 3}
    assert trace.step("f").attempts == 3


async def test_depends_on_runs_children_in_topological_order(run: Any) -> None:
    order: list[str] = []

    def rec(name: str) -> Any:
        async def _tool(**kwargs: Any) -> Any:
            await asyncio.sleep(0.01 if name == "fetch" else 0)
            order.append(name)
            return {"name": name, **kwargs}

        return _tool

    children = [
        tool("report", tool="report", depends_on=["fetch"], args={"data": "$fetch.output.name"}),
        tool("fetch", tool="fetch"),
        tool("audit", tool="audit"),
    ]
    trace = await run(block(children), {n: rec(n) for n in ("report", "fetch", "audit")})
    assert trace.status is TraceStatus.SUCCESS
    assert order.index("fetch") < order.index("report")
    assert trace.step("report").output == {"name": "report", "data": "fetch"}
    # Records follow the block's deterministic order, not completion order.
    assert step_ids(trace) == ["fetch", "audit", "report", "blk"]


async def test_dependant_of_a_failed_child_is_not_run(run: Any) -> None:
    def broken() -> None:
        raise ValueError("no data")

    ran: list[str] = []
    children = [tool("fetch", tool="broken"), tool("report", tool="report", depends_on=["fetch"])]
    trace = await run(block(children), {"broken": broken, "report": lambda: ran.append("r")})
    assert trace.status is TraceStatus.FAILED
    assert ran == []
    assert "not run because dependency 'fetch' failed" in (trace.step("report").error or "")


def test_reading_a_sibling_without_depending_on_it_is_rejected() -> None:
    from kernel import Program

    with pytest.raises(ProgramError, match="add 'a' to depends_on"):
        Program.from_dict(block([tool("a", tool="t"), tool("b", tool="t", args={"x": "$a"})]))


def test_only_tool_and_llm_steps_may_run_in_a_block() -> None:
    from kernel import Program

    child = {"id": "c", "type": "condition", "condition": "true", "then": "blk"}
    with pytest.raises(ProgramError, match="only tool and llm steps"):
        Program.from_dict(block([child]))


async def test_parallel_hashes_do_not_depend_on_completion_order(run: Any) -> None:
    async def slow_then(value: str, delay: float) -> str:
        await asyncio.sleep(delay)
        return value

    program = block(
        [
            tool("a", tool="t", args={"value": "A", "delay": "$da"}),
            tool("b", tool="t", args={"value": "B", "delay": "$db"}),
        ]
    )
    first = await run(program, {"t": slow_then}, {"da": 0.0, "db": 0.01})
    second = await run(program, {"t": slow_then}, {"da": 0.0, "db": 0.01})
    assert first.root_hash == second.root_hash
