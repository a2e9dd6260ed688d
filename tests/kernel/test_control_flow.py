"""Where control goes: array order, branches, terminal steps, next_step, guards."""

from __future__ import annotations

from typing import Any

import pytest

from kernel import ProgramError, StepStatus, TraceStatus
from tests.conftest import step_ids, tool


def noop(**_: Any) -> str:
    return "ok"


TOOLS = {name: noop for name in ("a", "b", "c", "yes_path", "no_path", "after")}


async def test_steps_run_in_array_order(run: Any) -> None:
    trace = await run({"name": "p", "steps": [tool("a"), tool("b"), tool("c")]}, TOOLS)
    assert trace.status is TraceStatus.SUCCESS
    assert step_ids(trace) == ["a", "b", "c"]


@pytest.mark.parametrize(("flag", "expected"), [(True, "yes_path"), (False, "no_path")])
async def test_condition_jumps_and_branch_target_is_terminal(
    run: Any, flag: bool, expected: str
) -> None:
    program = {
        "name": "p",
        "steps": [
            {
                "id": "c",
                "type": "condition",
                "condition": "$flag",
                "then": "yes_path",
                "otherwise": "no_path",
            },
            tool("yes_path"),
            tool("no_path"),
            tool("after"),
        ],
    }
    trace = await run(program, TOOLS, {"flag": flag})
    assert step_ids(trace) == ["c", expected]
    assert trace.status is TraceStatus.SUCCESS


async def test_branch_target_with_next_step_continues(run: Any) -> None:
    program = {
        "name": "p",
        "steps": [
            {
                "id": "c",
                "type": "condition",
                "condition": "true",
                "then": "yes_path",
                "otherwise": "no_path",
            },
            tool("yes_path", next_step="after"),
            tool("no_path"),
            tool("after"),
        ],
    }
    trace = await run(program, TOOLS)
    assert step_ids(trace) == ["c", "yes_path", "after"]


async def test_condition_without_otherwise_falls_through_when_false(run: Any) -> None:
    program = {
        "name": "p",
        "steps": [
            {"id": "c", "type": "condition", "condition": "false", "then": "c2"},
            tool("a"),
            {"id": "c2", "type": "condition", "condition": "true", "then": "b"},
            tool("b"),
        ],
    }
    trace = await run(program, TOOLS)
    assert step_ids(trace) == ["c", "a", "c2", "b"]


async def test_is_terminal_ends_the_run(run: Any) -> None:
    program = {"name": "p", "steps": [tool("a", is_terminal=True), tool("b")]}
    trace = await run(program, TOOLS)
    assert step_ids(trace) == ["a"]
    assert trace.status is TraceStatus.SUCCESS
    assert trace.final_output == "ok"


async def test_next_step_jumps_backwards_and_forwards(run: Any) -> None:
    program = {"name": "p", "steps": [tool("a", next_step="c"), tool("b"), tool("c")]}
    trace = await run(program, TOOLS)
    assert step_ids(trace) == ["a", "c"]


async def test_step_reference_truthiness_is_the_outputs(run: Any) -> None:
    program = {
        "name": "p",
        "steps": [
            tool("check"),
            {
                "id": "c",
                "type": "condition",
                "condition": "$check",
                "then": "yes_path",
                "otherwise": "no_path",
            },
            tool("yes_path"),
            tool("no_path"),
        ],
    }
    trace = await run(program, {**TOOLS, "check": lambda: ""})
    assert step_ids(trace)[-1] == "no_path"
    trace = await run(program, {**TOOLS, "check": lambda: {"status": "ok"}})
    assert step_ids(trace)[-1] == "yes_path"


async def test_guard_cannot_be_bypassed_by_context(run: Any) -> None:
    program = {
        "name": "p",
        "steps": [
            tool("decide", output_key="decision"),
            {
                "id": "guard",
                "type": "condition",
                "condition": "$decision == 'yes'",
                "then": "yes_path",
                "otherwise": "no_path",
            },
            tool("yes_path"),
            tool("no_path"),
        ],
    }
    tools = {**TOOLS, "decide": lambda: "no"}
    with pytest.raises(ProgramError, match="context key 'decision' is the output_key"):
        await run(program, tools, {"decision": "yes"})
    with pytest.raises(ProgramError, match="context key 'guard' is also a step id"):
        await run(program, tools, {"guard": True})
    trace = await run(program, tools)
    assert step_ids(trace)[-1] == "no_path"


async def test_injected_value_cannot_change_the_condition(run: Any) -> None:
    program = {
        "name": "p",
        "steps": [
            {
                "id": "guard",
                "type": "condition",
                "condition": "$role == 'admin'",
                "then": "yes_path",
                "otherwise": "no_path",
            },
            tool("yes_path"),
            tool("no_path"),
        ],
    }
    trace = await run(program, TOOLS, {"role": "x' or 'a' == 'a"})
    assert step_ids(trace)[-1] == "no_path"


async def test_condition_error_fails_closed_whatever_on_error_says(run: Any) -> None:
    program = {
        "name": "p",
        "steps": [
            {
                "id": "guard",
                "type": "condition",
                "condition": "$amount > 100",
                "then": "yes_path",
                "otherwise": "no_path",
                "on_error": "skip",
            },
            tool("yes_path"),
            tool("no_path"),
        ],
    }
    trace = await run(program, TOOLS, {"amount": "lots"})
    assert trace.status is TraceStatus.FAILED
    assert step_ids(trace) == ["guard"]
    assert trace.steps[0].status is StepStatus.FAILED
    assert "str" in (trace.error or "") and "int" in (trace.error or "")


async def test_condition_on_missing_value_fails_closed(run: Any) -> None:
    program = {
        "name": "p",
        "steps": [
            {
                "id": "guard",
                "type": "condition",
                "condition": "$approved",
                "then": "yes_path",
                "otherwise": "no_path",
            },
            tool("yes_path"),
            tool("no_path"),
        ],
    }
    trace = await run(program, TOOLS)
    assert trace.status is TraceStatus.FAILED
    assert "context key 'approved' is missing" in (trace.error or "")


async def test_final_output_is_the_last_steps_output(run: Any) -> None:
    trace = await run(
        {"name": "p", "steps": [tool("a"), tool("b")]}, {"a": lambda: 1, "b": lambda: {"total": 2}}
    )
    assert trace.final_output == {"total": 2}
