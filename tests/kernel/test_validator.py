"""ProgramValidator: what cannot run on this VM, and what is probably a mistake."""

from __future__ import annotations

from typing import Any

import pytest

from kernel import ExecutionVM, Program, ProgramError, ProgramValidator, Severity
from tests.conftest import tool


def program(steps: list[dict[str, Any]], **fields: Any) -> Program:
    return Program.from_dict({"name": "p", "steps": steps, **fields})


def test_unknown_tool_is_an_error_listing_the_registered_tools() -> None:
    report = ProgramValidator(tools=["reserve", "capture"]).validate(program([tool("pay")]))
    assert not report.ok
    assert str(report.errors[0]) == (
        "step 'pay', field 'tool': tool 'pay' is not registered "
        "(registered tools: capture, reserve)"
    )


def test_cycle_without_max_steps_is_an_error_naming_the_cycle() -> None:
    loop = [tool("a"), tool("b", next_step="a")]
    report = ProgramValidator().validate(program(loop))
    assert [f.step_id for f in report.errors] == ["a"]
    assert "a -> b -> a form a cycle" in report.errors[0].message
    assert ProgramValidator().validate(program(loop, max_steps=10)).ok


def test_cycle_through_a_condition_is_found() -> None:
    steps = [
        tool("work", next_step="again"),
        {
            "id": "again",
            "type": "condition",
            "condition": "$work",
            "then": "work",
            "otherwise": "done",
        },
        tool("done"),
    ]
    assert not ProgramValidator().validate(program(steps)).ok


def test_branch_target_without_next_step_ends_the_run_so_no_loop_is_formed() -> None:
    steps = [
        tool("work"),
        {
            "id": "again",
            "type": "condition",
            "condition": "$work",
            "then": "work",
            "otherwise": "done",
        },
        tool("done"),
    ]
    report = ProgramValidator().validate(program(steps))
    assert report.ok
    assert {f.step_id for f in report.warnings} == {"again", "done"}


def test_unreachable_step_is_a_warning_not_an_error() -> None:
    steps = [tool("a", is_terminal=True), tool("orphan")]
    report = ProgramValidator().validate(program(steps))
    assert report.ok
    assert [(f.severity, f.step_id) for f in report.warnings] == [(Severity.WARNING, "orphan")]


def test_fall_through_into_a_branch_target_is_a_warning() -> None:
    steps = [
        {"id": "c", "type": "condition", "condition": "true", "then": "x", "otherwise": "y"},
        tool("x", next_step="z"),
        tool("y"),
        tool("z"),
    ]
    findings = ProgramValidator().validate(program(steps)).warnings
    assert not findings
    steps = [
        tool("start"),
        {"id": "c", "type": "condition", "condition": "true", "then": "y"},
        tool("mid"),
        tool("y"),
    ]
    warnings = ProgramValidator().validate(program(steps)).warnings
    assert any("falls through into branch target 'y'" in f.message for f in warnings)


async def test_llm_step_without_adapter_fails_validation_clearly_not_with_a_type_error() -> None:
    prog = program([{"id": "ask", "type": "llm", "prompt": "hi"}])
    with pytest.raises(ProgramError, match="step 'ask', field 'type': llm step but the VM has no"):
        await ExecutionVM().run(prog)


async def test_vm_refuses_a_program_using_an_unregistered_tool() -> None:
    with pytest.raises(ProgramError, match="tool 'missing' is not registered"):
        await ExecutionVM(tools={"other": lambda: None}).run(program([tool("missing")]))


async def test_vm_refuses_an_unbounded_cycle_before_running_anything() -> None:
    calls: list[int] = []
    prog = program([tool("a", next_step="a")])
    with pytest.raises(ProgramError, match="no max_steps"):
        await ExecutionVM(tools={"a": lambda: calls.append(1)}).run(prog)
    assert calls == []


def test_ten_thousand_step_program_validates_without_recursion_limits() -> None:
    steps = [tool(f"s{i}", tool="noop") for i in range(10_000)]
    steps[-1]["next_step"] = "s0"
    report = ProgramValidator(tools=["noop"]).validate(program(steps))
    assert not report.ok  # the 10,000-step cycle is found iteratively
    assert ProgramValidator(tools=["noop"]).validate(program(steps, max_steps=50_000)).ok
