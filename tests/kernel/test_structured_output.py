"""Typed LLM outputs: output_schema turns a reply into data, or a mismatch handled by on_error."""

from __future__ import annotations

import contextlib
import json
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernel import Program, ProgramError, StepStatus, TraceStatus
from kernel.adapters import MockLLMAdapter
from kernel.structured_output import StructuredOutputError, parse_output
from tests.conftest import step_ids, tool

VERDICT = {
    "type": "object",
    "required": ["label", "confidence"],
    "properties": {
        "label": {"enum": ["spam", "ham"]},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
    },
    "additionalProperties": False,
}

# --- parse_output -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "schema", "expected"),
    [
        ("10", "int", 10),
        ('"10"', "int", 10),
        (" 10 \n", "int", 10),
        ("10.0", "int", 10),
        ("-3", "int", -3),
        ("1e2", "int", 100),
        ('" 7 "', "int", 7),
        ("```\n42\n```", "int", 42),
        ("2.5", "float", 2.5),
        ("3", "float", 3.0),
        ('"0.25"', "float", 0.25),
        ("yes", "bool", True),
        ("No", "bool", False),
        ("TRUE", "bool", True),
        ("false", "bool", False),
        ('"yes"', "bool", True),
        (" True\n", "bool", True),
        ('{"a": [1, null]}', "json", {"a": [1, None]}),
        ('"text"', "json", "text"),
        ('Here you go:\n```json\n{"a": 1}\n```\nAnything else?', "json", {"a": 1}),
        ('```JSON\n{"a": 1}\n```', "json", {"a": 1}),
        ("```\n[1, 2]\n```", "json", [1, 2]),
        ('```{"a": 1}```', "json", {"a": 1}),
        ("first ```[1]``` then ```[2]```", "json", [1]),
        # A reply that is JSON as a whole is read whole, even if a string holds a fence.
        ('{"code": "```py\\nx\\n```"}', "json", {"code": "```py\nx\n```"}),
        ('{"label": "spam", "confidence": 0.9}', VERDICT, {"label": "spam", "confidence": 0.9}),
    ],
)
def test_parse_output_returns_typed_values(text: str, schema: Any, expected: Any) -> None:
    value = parse_output(text, schema)
    assert value == expected
    assert type(value) is type(expected)


@pytest.mark.parametrize(
    ("text", "schema", "message"),
    [
        ("10.5", "int", "expected an integer, got '10.5' (not a whole number)"),
        ("ten", "int", "expected an integer, got 'ten'"),
        ("true", "int", "expected an integer, got 'true'"),
        ("", "int", "expected an integer, got an empty reply"),
        ("1e400", "int", "expected an integer, got '1e400'"),
        ("NaN", "float", "expected a number, got 'NaN'"),
        ("Infinity", "float", "expected a number, got 'Infinity'"),
        ("9" * 400, "float", "too large for a float"),
        ("maybe", "bool", "expected true/false or yes/no, got 'maybe'"),
        ("1", "bool", "expected true/false or yes/no, got '1'"),
        ("{'a': 1}", "json", "expected JSON, got \"{'a': 1}\" (Expecting property name"),
        ('"\\ud800"', "json", "expected JSON"),
        ("[" * 100_000, "json", "expected JSON"),
        ("no json here", VERDICT, "expected JSON matching the output schema, got 'no json here'"),
    ],
)
def test_parse_output_says_what_was_expected_and_what_came_back(
    text: str, schema: Any, message: str
) -> None:
    with pytest.raises(StructuredOutputError) as info:
        parse_output(text, schema)
    assert message in str(info.value)


def test_schema_mismatch_lists_every_violation_and_an_excerpt() -> None:
    reply = '```json\n{"label": "eggs", "confidence": 2, "why": "' + "x" * 300 + '"}\n```'
    with pytest.raises(StructuredOutputError) as info:
        parse_output(reply, VERDICT)
    message = str(info.value)
    assert message.startswith("reply does not match the output schema: ")
    assert 'at /label: expected one of ["spam", "ham"], got "eggs"' in message
    assert "at /confidence: expected a number <= 1, got 2" in message
    assert "at /: property 'why' is not allowed" in message
    assert 'got \'{"label": "eggs"' in message
    assert "characters)" in message and len(message) < 600  # an excerpt, not the whole reply


@settings(max_examples=300, deadline=timedelta(milliseconds=500))
@given(
    text=st.one_of(
        st.text(),
        st.text(alphabet='0123456789.eE+-"tfnaluesyo[]{}:, `\n\\'),
        st.recursive(
            st.none() | st.booleans() | st.floats(allow_nan=False) | st.integers() | st.text(),
            lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
        ).map(json.dumps),
    ).flatmap(lambda body: st.sampled_from([body, f"```json\n{body}\n```", f"x ```{body}"])),
    schema=st.sampled_from(["json", "int", "float", "bool", VERDICT]),
)
def test_parse_output_raises_only_structured_output_error(text: str, schema: Any) -> None:
    with contextlib.suppress(StructuredOutputError):  # any other exception fails the test
        parse_output(text, schema)


# --- through the VM -----------------------------------------------------------------------------


def llm(step_id: str, prompt: str, **fields: Any) -> dict[str, Any]:
    return {"id": step_id, "type": "llm", "prompt": prompt, **fields}


TOOLS = {"high": lambda: "high", "low": lambda: "low"}


def scoring(**fields: Any) -> dict[str, Any]:
    return {
        "name": "scoring",
        "steps": [
            llm("score", "Rate 0-10", output_schema="int", **fields),
            {
                "id": "check",
                "type": "condition",
                "condition": "$score.output > 5",
                "then": "high",
                "otherwise": "low",
            },
            tool("high", is_terminal=True),
            tool("low", is_terminal=True),
        ],
    }


async def test_int_output_is_typed_and_drives_a_numeric_condition(run: Any) -> None:
    trace = await run(scoring(), TOOLS, llm=MockLLMAdapter("10"))
    assert trace.status is TraceStatus.SUCCESS
    assert trace.steps[0].output == 10 and type(trace.steps[0].output) is int
    assert step_ids(trace) == ["score", "check", "high"]


async def test_fenced_json_object_is_readable_field_by_field(run: Any) -> None:
    program = {
        "name": "triage",
        "steps": [
            llm("classify", "Classify this mail", output_schema=VERDICT),
            {
                "id": "gate",
                "type": "condition",
                "condition": (
                    "$classify.output.label == 'spam' and $classify.output.confidence > 0.8"
                ),
                "then": "high",
                "otherwise": "low",
            },
            tool("high", is_terminal=True),
            tool("low", is_terminal=True),
        ],
    }
    reply = 'Sure!\n```json\n{"label": "spam", "confidence": 0.93}\n```'
    trace = await run(program, TOOLS, llm=MockLLMAdapter(reply))
    assert trace.status is TraceStatus.SUCCESS
    assert trace.steps[0].output == {"label": "spam", "confidence": 0.93}
    assert step_ids(trace)[-1] == "high"


async def test_mismatch_with_on_error_fail_fails_with_the_message(run: Any) -> None:
    trace = await run(scoring(), TOOLS, llm=MockLLMAdapter("about seven"))
    assert trace.status is TraceStatus.FAILED
    assert trace.steps[0].status is StepStatus.FAILED
    assert trace.error == "step 'score': expected an integer, got 'about seven'"
    assert step_ids(trace) == ["score"]


async def test_mismatch_with_on_error_skip_uses_the_first_allowed_output_typed(run: Any) -> None:
    program = {
        "name": "p",
        "steps": [
            llm(
                "pick",
                "Pick",
                output_schema="json",
                allowed_outputs=['"a"', '"b"'],
                on_error="skip",
            )
        ],
    }
    trace = await run(program, llm=MockLLMAdapter("c"))
    assert trace.steps[0].status is StepStatus.SKIPPED
    assert trace.steps[0].output == "a"  # '"a"' parsed as the schema says
    assert "allowed outputs are" in (trace.steps[0].error or "")


async def test_mismatch_with_on_error_skip_and_no_allowed_outputs_gives_null(run: Any) -> None:
    program = {"name": "p", "steps": [llm("n", "N?", output_schema="float", on_error="skip")]}
    trace = await run(program, llm=MockLLMAdapter("lots"))
    assert trace.status is TraceStatus.SUCCESS
    assert trace.steps[0].status is StepStatus.SKIPPED
    assert trace.steps[0].output is None
    assert trace.steps[0].error == "step 'n': expected a number, got 'lots'"


async def test_allowed_outputs_are_checked_before_parsing(run: Any) -> None:
    program = {
        "name": "p",
        "steps": [llm("a", "A?", output_schema="bool", allowed_outputs=["yes", "no"])],
    }
    trace = await run(program, llm=MockLLMAdapter(" no \n"))
    assert trace.steps[0].output is False
    trace = await run(program, llm=MockLLMAdapter("true"))  # parses as bool, but not allowed
    assert trace.status is TraceStatus.FAILED
    assert "allowed outputs are ['yes', 'no']" in (trace.error or "")


async def test_mismatch_with_on_error_retry_asks_again(run: Any) -> None:
    adapter = MockLLMAdapter(["seven", "7.5", "```\n7\n```"])
    trace = await run(scoring(on_error="retry"), TOOLS, llm=adapter)
    assert trace.status is TraceStatus.SUCCESS
    assert trace.steps[0].attempts == 3 and len(adapter.calls) == 3
    assert trace.steps[0].output == 7
    assert trace.metrics.retries == 2
    assert step_ids(trace)[-1] == "high"


async def test_retry_gives_up_after_max_retries(run: Any) -> None:
    adapter = MockLLMAdapter(["a", "b"])
    trace = await run(scoring(on_error="retry", max_retries=2), TOOLS, llm=adapter)
    assert trace.status is TraceStatus.FAILED
    assert trace.steps[0].attempts == 2
    assert trace.error == "step 'score': expected an integer, got 'b'"


async def test_without_output_schema_the_reply_is_untouched(run: Any) -> None:
    trace = await run({"name": "p", "steps": [llm("a", "A")]}, llm=MockLLMAdapter(" 10 \n"))
    assert trace.steps[0].output == " 10 \n"


# --- load-time checks ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        ("integer", "unknown shorthand 'integer'; use one of json, int, float, bool"),
        ({"type": "object", "properties": {"a": {"$ref": "#/$defs/a"}}}, "keyword '$ref'"),
        ({"type": "string", "format": "email"}, "at /format: keyword 'format' is not supported"),
        ({"type": "int"}, 'at /type: "int" is not a type'),
    ],
)
def test_bad_schema_is_rejected_at_load_time_naming_step_and_field(
    schema: Any, message: str
) -> None:
    with pytest.raises(ProgramError) as info:
        Program.from_dict({"name": "p", "steps": [llm("rate", "Rate", output_schema=schema)]})
    [problem] = info.value.problems
    assert problem.startswith("step 'rate', field 'output_schema': ")
    assert message in problem


def test_bad_schema_in_a_parallel_child_is_rejected_too() -> None:
    program = {
        "name": "p",
        "steps": [
            {
                "id": "block",
                "type": "parallel",
                "parallel_steps": [llm("inner", "x", output_schema={"minimum": "0"})],
            }
        ],
    }
    with pytest.raises(ProgramError, match="step 'inner', field 'output_schema': at /minimum"):
        Program.from_dict(program)
