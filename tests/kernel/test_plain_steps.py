"""The plain-step fast path of Program.from_dict builds exactly what pydantic's validator builds.

Most steps skip the Step validator (kernel.program._plain_step); these tests generate steps in
and around that path's domain and check that a step it builds is equal in every way a program
uses (values, field order, fields-set, dump, hash) and that whatever it declines is left to the
validator, whose errors are unchanged.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

import kernel.program as program_module
from kernel.errors import ProgramError
from kernel.program import Program, Step

# The fields the fast path takes (beyond id and type, which every step draws), from its own
# list, so that a field added to it is generated here too; then fields outside its domain,
# which always take the validator.
PLAIN = sorted(program_module._PLAIN_FIELDS - {"id", "type"})
OUTSIDE = ["timeout_seconds", "on_error", "allowed_outputs", "seconds", "oops"]
scalars = st.one_of(
    st.text(max_size=6),
    st.sampled_from(["tool", "llm", "condition", "wait", "parallel", "a", "$a.output"]),
    st.integers(-2, 2),
    st.booleans(),
    st.none(),
    st.floats(allow_nan=False, allow_infinity=False),
)
args = st.dictionaries(st.one_of(st.text(max_size=4), st.integers(0, 3)), scalars, max_size=3)
values = st.one_of(scalars, args, st.lists(scalars, max_size=2))


def well_typed(name: str) -> st.SearchStrategy[Any]:
    if name == "args":
        return st.dictionaries(st.text(max_size=4), scalars, max_size=3)
    if name == "is_terminal":
        return st.booleans()
    return st.text(max_size=4)


@st.composite
def step_dicts(draw: st.DrawFn) -> dict[str, Any]:
    """Mostly steps of the fast path's shape, each field sometimes of a wrong type."""
    step: dict[str, Any] = {
        "id": draw(st.sampled_from(["a", "b"]) | st.sampled_from([""]) | scalars)
    }
    step["type"] = draw(st.sampled_from(["tool", "llm", "condition"]) | scalars)
    required = {"tool": "tool", "llm": "prompt", "condition": "condition"}
    if draw(st.integers(0, 4)):  # usually give the field the type needs
        step[required.get(str(step["type"]), "tool")] = draw(st.text(max_size=4))
    for name in draw(st.lists(st.sampled_from(PLAIN + OUTSIDE), max_size=3, unique=True)):
        typed = draw(st.integers(0, 3)) > 0 and name in PLAIN
        step[name] = draw(well_typed(name) if typed else values)
    return step


def validated(data: dict[str, Any]) -> Step | None:
    try:
        return Step.model_validate(data)
    except ValidationError:
        return None


@settings(max_examples=600, deadline=None)
@given(step_dicts())
def test_a_plain_step_equals_the_validated_step(data: dict[str, Any]) -> None:
    fast = program_module._plain_step(data)
    slow = validated(data)
    if fast is None:
        return
    assert slow is not None, f"the fast path accepted a step the validator rejects: {data}"
    assert fast == slow
    assert list(vars(fast)) == list(vars(slow))
    assert fast.model_fields_set == slow.model_fields_set
    assert fast.model_dump(mode="json", exclude_defaults=True) == slow.model_dump(
        mode="json", exclude_defaults=True
    )
    assert fast.model_dump() == slow.model_dump()


def without_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(program_module, "_plain_step", lambda data: None)


def load(steps: list[dict[str, Any]]) -> Program | str:
    try:
        return Program.from_dict({"name": "p", "steps": steps})
    except ProgramError as exc:
        return str(exc)


@settings(max_examples=300, deadline=None)
@given(st.lists(step_dicts(), min_size=1, max_size=3))
def test_programs_load_alike_with_and_without_the_fast_path(steps: list[dict[str, Any]]) -> None:
    fast = load(steps)
    with pytest.MonkeyPatch.context() as patch:
        without_fast_path(patch)
        slow = load(steps)
    if isinstance(fast, str) or isinstance(slow, str):
        assert fast == slow  # the same error message, naming the same steps and fields
        return
    assert fast.hash == slow.hash
    assert fast.data == slow.data
    assert fast.steps == slow.steps


def test_the_callers_dict_and_args_are_not_shared_with_the_program() -> None:
    step = {"id": "a", "type": "tool", "tool": "t", "args": {"n": 1}}
    data = {"name": "p", "steps": [step]}
    program = Program.from_dict(data)
    assert program_module._plain_step(step) is not None  # this step takes the fast path
    step["args"]["n"] = 2
    data["steps"].append({"id": "b", "type": "tool", "tool": "t"})
    assert program.steps[0].args == {"n": 1}
    assert len(program.steps) == 1


def test_a_plain_step_with_a_foreign_field_still_gets_the_validators_message() -> None:
    message = load([{"id": "a", "type": "tool", "tool": "t", "prompt": "hi"}])
    assert message == (
        "invalid program: step 'a': field 'prompt' is not valid on a tool step (only on llm steps)"
    )
