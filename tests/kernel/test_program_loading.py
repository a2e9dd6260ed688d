"""Load-time strictness: a malformed program is refused with a message naming step and field."""

from __future__ import annotations

from typing import Any

import pytest

from kernel import Program, ProgramError
from tests.conftest import tool


def load(steps: list[dict[str, Any]], **program: Any) -> Program:
    return Program.from_dict({"name": "p", "steps": steps, **program})


def problem(steps: list[dict[str, Any]], **program: Any) -> str:
    with pytest.raises(ProgramError) as info:
        load(steps, **program)
    return str(info.value)


def test_unknown_step_field_is_rejected_naming_step_field_and_suggestion() -> None:
    message = problem([tool("a", tols="x")])
    assert "step 'a'" in message
    assert "unknown field 'tols'" in message
    assert "did you mean 'tool'" in message


def test_unknown_program_field_is_rejected() -> None:
    assert "unknown field 'max_step'" in problem([tool("a")], max_step=3)


def test_duplicate_step_ids_are_rejected() -> None:
    assert "step 'a': duplicate step id" in problem([tool("a"), tool("a")])


def test_duplicate_id_between_top_level_and_parallel_child_is_rejected() -> None:
    steps = [tool("a"), {"id": "p", "type": "parallel", "parallel_steps": [tool("a")]}]
    assert "duplicate step id" in problem(steps)


@pytest.mark.parametrize("field", ["then", "otherwise"])
def test_missing_branch_target_is_rejected(field: str) -> None:
    steps = [{"id": "c", "type": "condition", "condition": "true", field: "nowhere"}]
    assert f"step 'c', field '{field}': no step has id 'nowhere'" in problem(steps)


def test_missing_next_step_target_is_rejected() -> None:
    assert "field 'next_step': no step has id 'b'" in problem([tool("a", next_step="b")])


def test_jump_into_parallel_child_is_rejected() -> None:
    steps = [
        tool("a", next_step="child"),
        {"id": "p", "type": "parallel", "parallel_steps": [tool("child")]},
    ]
    assert "inside parallel block 'p'" in problem(steps)


def test_llm_field_on_tool_step_is_rejected_naming_step_and_field() -> None:
    message = problem([tool("a", prompt="hello")])
    assert "step 'a': field 'prompt' is not valid on a tool step (only on llm steps)" in message


def test_step_of_a_type_missing_its_required_field_is_rejected() -> None:
    assert "a tool step needs 'tool'" in problem([{"id": "a", "type": "tool"}])


def test_unknown_step_type_is_rejected() -> None:
    message = problem([{"id": "a", "type": "shell"}])
    assert "step 'a'" in message and "type" in message


def test_max_concurrency_zero_is_rejected() -> None:
    steps = [{"id": "p", "type": "parallel", "max_concurrency": 0, "parallel_steps": [tool("a")]}]
    message = problem(steps)
    assert "step 'p', field 'max_concurrency'" in message
    assert "greater than or equal to 1" in message


@pytest.mark.parametrize(
    "budget", ["max_steps", "max_tokens", "max_stalled_steps", "max_duration_seconds"]
)
def test_budget_below_one_is_rejected(budget: str) -> None:
    assert f"field '{budget}'" in problem([tool("a")], **{budget: 0})


def test_max_retries_below_one_is_rejected() -> None:
    assert "step 'a', field 'max_retries'" in problem([tool("a", max_retries=0)])


def test_empty_program_is_rejected() -> None:
    assert "steps" in problem([])


def test_reference_to_unknown_step_output_is_a_load_time_error() -> None:
    message = problem([tool("a", args={"x": "$ghost.output"})])
    assert "step 'a', field 'args.x': '$ghost.output' refers to unknown step 'ghost'" in message


def test_reading_a_step_field_other_than_output_is_rejected_with_the_right_spelling() -> None:
    message = problem([tool("a"), tool("b", args={"x": "$a.status"})])
    assert "write '$a.output.status'" in message


def test_bad_condition_is_rejected_at_load_time_with_its_column() -> None:
    message = problem([{"id": "c", "type": "condition", "condition": "$a == @", "then": "c"}])
    assert "step 'c', field 'condition'" in message
    assert "column 7" in message


def test_output_key_equal_to_a_step_id_is_rejected() -> None:
    message = problem([tool("a", output_key="b"), tool("b")])
    assert "'b' is also a step id" in message


def test_step_id_that_cannot_be_referenced_is_rejected() -> None:
    assert "id must start with a letter" in problem([tool("pay-now", tool="x")])


def test_all_problems_are_reported_together() -> None:
    with pytest.raises(ProgramError) as info:
        load([tool("a", next_step="x"), tool("a", next_step="y")])
    assert len(info.value.problems) >= 3


def test_condition_needs_a_target() -> None:
    assert "needs 'then' or 'otherwise'" in problem(
        [{"id": "c", "type": "condition", "condition": "true"}]
    )


def test_depends_on_cycle_is_rejected() -> None:
    steps = [
        {
            "id": "p",
            "type": "parallel",
            "parallel_steps": [tool("a", depends_on=["b"]), tool("b", depends_on=["a"])],
        }
    ]
    assert "dependency cycle among a, b" in problem(steps)


def test_program_hash_ignores_fields_left_at_default_and_key_order() -> None:
    a = Program.from_dict({"name": "p", "steps": [{"id": "a", "type": "tool", "tool": "t"}]})
    b = Program.from_dict(
        {"steps": [{"tool": "t", "type": "tool", "id": "a", "on_error": None}], "name": "p"}
    )
    c = Program.from_dict({"name": "p", "steps": [{"id": "a", "type": "tool", "tool": "u"}]})
    assert a.hash == b.hash
    assert a.hash != c.hash
    assert len(a.hash) == 64


def test_yaml_program_keeps_yes_and_no_as_strings() -> None:
    program = Program.from_yaml(
        "name: p\nsteps:\n  - id: a\n    type: llm\n    prompt: hi\n"
        "    allowed_outputs: [yes, no]\n"
    )
    assert program.steps[0].allowed_outputs == ["yes", "no"]


def test_json_and_yaml_loading_give_the_same_program() -> None:
    text_json = (
        '{"name": "p", "steps": [{"id": "a", "type": "tool", "tool": "t", "args": {"n": 1}}]}'
    )
    text_yaml = "name: p\nsteps:\n  - {id: a, type: tool, tool: t, args: {n: 1}}\n"
    assert Program.from_json(text_json).hash == Program.from_yaml(text_yaml).hash


def test_invalid_json_is_a_program_error() -> None:
    with pytest.raises(ProgramError, match="not valid JSON"):
        Program.from_json("{")


def test_model_validate_is_strict_too() -> None:
    with pytest.raises(ValueError, match="unknown field 'oops'"):
        Program.model_validate(
            {"name": "p", "steps": [{"id": "a", "type": "tool", "tool": "t", "oops": 1}]}
        )
