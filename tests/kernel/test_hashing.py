"""Canonical JSON and the chained state hash: exact, fast, and independent of the process."""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from kernel import CanonicalizationError, ExecutionVM, Program, StepRecord, StepStatus, StepType
from kernel.canonical import _NOT_PLAIN, MAX_SAFE_INTEGER, canonical_json, is_plain, plain_form
from kernel.hashing import record_bytes
from kernel.trace import Trace
from kernel.vm import random_id
from tests.json_strategies import any_text, json_values, plain_json

REPO = Path(__file__).resolve().parents[2]


@settings(max_examples=400)
@given(plain_json)
def test_fast_path_is_byte_identical_to_rfc8785(value: Any) -> None:
    assert plain_form(value) is not _NOT_PLAIN
    assert canonical_json(value) == rfc8785.dumps(value)


def test_every_ascii_and_special_character_escapes_as_rfc8785_does_on_the_fast_path() -> None:
    specials = ["\u2028", "\u2029", "\ufeff", "\ud7ff", "\ue000", "\uffff", "\U0001f600"]
    for char in [chr(code) for code in range(0x80)] + specials:
        value = {"k" + char[:1] if ord(char) < 0x10000 else "k": [char, "a" + char + "b"]}
        assert plain_form(value) is not _NOT_PLAIN
        assert canonical_json(value) == rfc8785.dumps(value), repr(char)


def test_nesting_deeper_than_the_fast_encoder_takes_is_still_exact() -> None:
    value: Any = "leaf"
    for depth in range(400):  # orjson stops at 255 levels; the standard encoder takes over
        value = [value] if depth % 2 else {"d": value}
    assert canonical_json(value) == rfc8785.dumps(value)


@settings(max_examples=200)
@given(plain_json)
def test_plain_form_leaves_the_value_it_was_given_unchanged(value: Any) -> None:
    before = repr(value)
    form = plain_form(value)
    assert repr(value) == before
    assert (form is value) == is_plain(value)


@settings(max_examples=400)
@given(json_values)
def test_every_json_value_matches_rfc8785_after_documented_mapping(value: Any) -> None:
    # Big integers are hashed as decimal strings; everything else is RFC 8785 as is.
    def mapped(v: Any) -> Any:
        if isinstance(v, bool) or v is None:
            return v
        if isinstance(v, int):
            return v if abs(v) <= MAX_SAFE_INTEGER else str(v)
        if isinstance(v, float):
            return 0 if v == 0 else v
        if isinstance(v, list):
            return [mapped(x) for x in v]
        if isinstance(v, dict):
            return {k: mapped(x) for k, x in v.items()}
        return v

    assert canonical_json(value) == rfc8785.dumps(mapped(value))


@settings(max_examples=2000)
@given(st.floats(allow_nan=True, allow_infinity=True))
def test_a_float_takes_the_fast_path_only_where_repr_is_the_es6_form(value: float) -> None:
    form = plain_form(value)
    if form is value:
        assert canonical_json(value) == rfc8785.dumps(value)
    elif form is not _NOT_PLAIN:  # integral: written as the integer, as ES6 does
        assert type(form) is int and form == value and abs(form) <= MAX_SAFE_INTEGER
        assert canonical_json(value) == rfc8785.dumps(value)
    else:
        assert not (1e-4 <= abs(value) < 1e16) or value.is_integer()


@pytest.mark.parametrize("value", [1e16, 2.0**53, 1e21, 5e-5, 1e-7, float("inf"), float("nan")])
def test_floats_where_repr_differs_from_es6_leave_the_fast_path(value: float) -> None:
    assert plain_form({"x": value}) is _NOT_PLAIN


@pytest.mark.parametrize("value", [1.0, -0.0, 0.0, -3.0, 2.0**53 - 1])
def test_integral_floats_take_the_fast_path_as_integers(value: float) -> None:
    assert plain_form({"x": [value]}) == {"x": [int(value)]}
    assert not is_plain({"x": value})  # a converted copy, not the value itself


def test_astral_keys_sort_by_utf16_like_rfc8785() -> None:
    value = {"\U0001f600": 1, "\ufb01": 2, "a": 3}
    assert not is_plain(value)
    assert canonical_json(value) == rfc8785.dumps(value)


def test_floats_use_the_es6_number_form() -> None:
    assert canonical_json({"a": 1.0, "b": 1e21, "c": 0.1, "d": -0.0}) == (
        b'{"a":1,"b":1e+21,"c":0.1,"d":0}'
    )


@dataclasses.dataclass
class Point:
    x: int
    y: int


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({3, 1, 2}, b"[1,2,3]"),
        ((1, "a"), b'[1,"a"]'),
        (b"\x00\xff", b'"AP8="'),
        (decimal.Decimal("10.50"), b'"10.50"'),
        (dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC), b'"2026-01-02T03:04:05+00:00"'),
        (uuid.UUID(int=1), b'"00000000-0000-0000-0000-000000000001"'),
        (Point(1, 2), b'{"x":1,"y":2}'),
        (StepStatus.SUCCESS, b'"SUCCESS"'),
        (2**60, b'"1152921504606846976"'),
    ],
)
def test_non_json_types_have_one_documented_form(value: Any, expected: bytes) -> None:
    assert canonical_json(value) == expected


@pytest.mark.parametrize("value", [float("nan"), float("inf"), {1: "int key"}, object(), "\ud800"])
def test_values_without_a_canonical_form_are_a_clear_error(value: Any) -> None:
    with pytest.raises(CanonicalizationError):
        canonical_json(value)


@settings(max_examples=200)
@given(st.text(min_size=1), st.sampled_from(list(StepStatus)), json_values, st.none() | any_text)
def test_record_bytes_equal_rfc8785_of_the_record(
    step_id: str, status: StepStatus, output: Any, error: str | None
) -> None:
    record = {"error": error, "output": output, "status": status.value, "step_id": step_id}
    assert record_bytes(step_id, status, output, error) == canonical_json(record)


def test_fast_record_constructor_equals_the_validating_one() -> None:
    args = dict(
        step_id="s",
        type=StepType.TOOL,
        status=StepStatus.SUCCESS,
        output={"a": [1]},
        error=None,
        attempts=2,
        started_at=1.5,
        finished_at=2.0,
    )
    fast = StepRecord.built(**args)  # type: ignore[arg-type]
    slow = StepRecord(**args, duration_ms=500.0)  # type: ignore[arg-type]
    assert fast == slow
    assert fast.model_dump_json() == slow.model_dump_json()


def test_fast_trace_constructor_equals_the_validating_one() -> None:
    args = dict(
        trace_id="t", program_name="p", program_hash="h" * 64, started_at=1.5, context={"x": 1}
    )
    fast = Trace.starting(**args)  # type: ignore[arg-type]
    slow = Trace(**args)  # type: ignore[arg-type]
    assert fast == slow
    assert fast.model_dump_json() == slow.model_dump_json()
    assert fast.model_fields_set == slow.model_fields_set
    fast.steps.append(StepRecord.built("s", StepType.TOOL, StepStatus.SUCCESS, 1, None, 1, 1, 2))
    assert Trace.starting(**args).steps == []  # type: ignore[arg-type]  # nothing shared


def test_trace_ids_are_random_version_4_uuids() -> None:
    ids = {random_id() for _ in range(1000)}
    assert len(ids) == 1000
    for text in list(ids)[:50]:
        parsed = uuid.UUID(text)
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122 and str(parsed) == text


HASH_SCRIPT = """
import asyncio, json
from kernel import ExecutionVM, Program
program = Program.from_dict({"name": "h", "steps": [
    {"id": "a", "type": "tool", "tool": "make", "args": {"tags": "$tags"}},
    {"id": "b", "type": "tool", "tool": "make", "args": {"prev": "$a.output"}},
]})
def make(**kw):
    return {"set": {"x", "y", "z", "w"}, "kw": kw, "f": 0.1}
trace = asyncio.run(ExecutionVM(tools={"make": make}).run(
    program, context={"tags": {"b": 1, "a": [1.5, "é"]}}))
print(json.dumps(trace.state_hashes))
"""


def test_hashes_are_identical_across_pythonhashseed_values() -> None:
    outputs = set()
    for seed in ("0", "1", "12345", "random"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        result = subprocess.run(
            [sys.executable, "-c", HASH_SCRIPT],
            capture_output=True,
            text=True,
            env=env,
            cwd=REPO,
            check=True,
        )
        outputs.add(result.stdout)
    assert len(outputs) == 1
    assert len(json.loads(outputs.pop())) == 2


async def test_same_program_and_inputs_give_the_same_hashes_and_different_inputs_do_not() -> None:
    program = Program.from_dict(
        {"name": "h", "steps": [{"id": "a", "type": "tool", "tool": "double", "args": {"n": "$n"}}]}
    )
    vm = ExecutionVM(tools={"double": lambda n: n * 2})
    one, two, other = [await vm.run(program, {"n": n}) for n in (1, 1, 2)]
    assert one.trace_id != two.trace_id
    assert one.state_hashes == two.state_hashes
    assert one.root_hash != other.root_hash
    assert one.initial_hash != other.initial_hash


async def test_trace_round_trips_through_json_exactly() -> None:
    program = Program.from_dict(
        {
            "name": "h",
            "steps": [
                {"id": "a", "type": "tool", "tool": "make"},
                {"id": "c", "type": "condition", "condition": "$a.output.n > 1", "then": "b"},
                {"id": "b", "type": "tool", "tool": "make"},
            ],
        }
    )
    trace = await ExecutionVM(
        tools={"make": lambda: {"n": 2, "when": dt.date(2026, 1, 1), "r": 0.25}}
    ).run(program)
    again = Trace.model_validate_json(trace.model_dump_json())
    assert again == trace
    assert trace.steps[0].output["when"] == "2026-01-01"  # stored in its JSON form
    assert again.state_snapshots == [(i, h) for i, h in enumerate(trace.state_hashes)]
    assert again.root_hash == trace.state_hashes[-1]


def test_records_built_on_the_hot_path_accept_assignment_and_deep_copies() -> None:
    record = StepRecord.built("s", StepType.TOOL, StepStatus.SUCCESS, {"a": 1}, None, 1, 1.0, 2.0)
    copied = record.model_copy(deep=True)
    copied.output = {"a": 2}
    assert record.output == {"a": 1} and copied.output == {"a": 2}
