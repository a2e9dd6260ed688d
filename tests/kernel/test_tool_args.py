"""A tool that declares its inputs has each step's literal args checked at load time."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kernel import Program, ProgramValidator
from kernel.tool_args import INTERPOLATED, ArgProblem, literal_view
from kernel.tools import bind_tool, declare_inputs


def test_the_literal_view_marks_what_the_run_fills_in() -> None:
    view = literal_view({"a": "$x", "b": "cost $$5", "c": ["${y.z} km", 3], "d": {"e": True}})
    assert view == {"a": INTERPOLATED, "b": "cost $5", "c": [INTERPOLATED, 3], "d": {"e": True}}


def test_a_declared_check_becomes_findings_naming_step_and_field() -> None:
    seen: list[Mapping[str, Any]] = []

    def check(view: Mapping[str, Any]) -> list[ArgProblem]:
        seen.append(view)
        return [ArgProblem("amount", "expected integer")] if view.get("amount") == "ten" else []

    async def pay(**arguments: Any) -> Any:
        return arguments

    tool = declare_inputs(pay, frozenset({"amount"}), check)
    assert bind_tool("pay", tool).accepts == frozenset({"amount"})
    program = Program.from_dict(
        {
            "name": "p",
            "steps": [
                {"id": "bad", "type": "tool", "tool": "pay", "args": {"amount": "ten"}},
                {"id": "later", "type": "tool", "tool": "pay", "args": {"amount": "$amount"}},
            ],
        }
    )
    report = ProgramValidator(tools={"pay": tool}).validate(program)
    assert [str(f) for f in report.errors] == ["step 'bad', field 'args.amount': expected integer"]
    assert seen[1] == {"amount": INTERPOLATED}
    # Given only names, nothing is checked beyond them.
    assert ProgramValidator(tools=["pay"]).validate(program).ok
