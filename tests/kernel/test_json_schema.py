"""The JSON Schema subset: exact 2020-12 semantics, and unsupported keywords refused up front."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kernel.json_schema import SchemaError, check_schema, validate

CASES = Path(__file__).parent / "cases" / "json_schema.json"


def load_cases() -> list[Any]:
    cases: list[dict[str, Any]] = json.loads(CASES.read_text(encoding="utf-8"))
    return [pytest.param(case, id=case["desc"]) for case in cases]


@pytest.mark.parametrize("case", load_cases())
def test_case(case: dict[str, Any]) -> None:
    check_schema(case["schema"])
    errors = validate(case["instance"], case["schema"])
    assert (errors == []) is case["valid"], errors
    assert all(error.startswith("at /") for error in errors)


# --- unsupported keywords and malformed schemas -------------------------------------------------


@pytest.mark.parametrize(
    "keyword",
    ["$ref", "$defs", "format", "patternProperties", "prefixItems", "contains", "if", "not"],
)
def test_unsupported_keyword_is_refused_naming_it(keyword: str) -> None:
    with pytest.raises(SchemaError) as info:
        check_schema({"type": "object", "properties": {"a": {keyword: {}}}})
    assert info.value.pointer == f"/properties/a/{keyword}"
    assert f"keyword '{keyword}' is not supported" in str(info.value)


@pytest.mark.parametrize(
    ("schema", "pointer", "message"),
    [
        ("string", "", "must be an object or a boolean"),
        ({"type": "int"}, "/type", '"int" is not a type'),
        ({"type": []}, "/type", "must not be an empty list"),
        ({"type": ["string", "string"]}, "/type", "lists a type twice"),
        ({"enum": []}, "/enum", "non-empty array"),
        ({"enum": "a"}, "/enum", "non-empty array"),
        ({"properties": []}, "/properties", "must be an object"),
        ({"properties": {"a": 1}}, "/properties/a", "must be an object or a boolean"),
        ({"required": "a"}, "/required", "array of property names"),
        ({"required": ["a", "a"]}, "/required", "lists a property twice"),
        ({"additionalProperties": "no"}, "/additionalProperties", "object or a boolean"),
        ({"items": [{}, {}]}, "/items", "the array form"),
        ({"minItems": -1}, "/minItems", "non-negative integer"),
        ({"maxLength": 1.5}, "/maxLength", "non-negative integer"),
        ({"minLength": True}, "/minLength", "non-negative integer"),
        ({"pattern": "("}, "/pattern", "invalid regular expression"),
        ({"pattern": 1}, "/pattern", "must be a string"),
        ({"minimum": "5"}, "/minimum", "finite number"),
        ({"maximum": True}, "/maximum", "finite number"),
        ({"anyOf": []}, "/anyOf", "non-empty array of schemas"),
        ({"oneOf": [{}, {"format": "date"}]}, "/oneOf/1/format", "not supported"),
        ({"allOf": [{"items": {"type": "x"}}]}, "/allOf/0/items/type", "is not a type"),
        ({"properties": {"a/b": {"$ref": "#"}}}, "/properties/a~1b/$ref", "not supported"),
        ({"properties": {"m~n": {"type": 3}}}, "/properties/m~0n/type", "is not a type"),
    ],
)
def test_malformed_schema_names_the_bad_part(schema: Any, pointer: str, message: str) -> None:
    with pytest.raises(SchemaError) as info:
        check_schema(schema)
    assert info.value.pointer == pointer
    assert message in str(info.value)
    assert str(info.value).startswith(f"at {pointer or '/'}: ")


def test_schema_error_is_a_value_error() -> None:
    assert issubclass(SchemaError, ValueError)


def test_validate_refuses_an_unsupported_schema_instead_of_ignoring_it() -> None:
    with pytest.raises(SchemaError, match="'format'"):
        validate("not a date", {"type": "string", "format": "date"})


def test_deeply_nested_schema_is_a_schema_error() -> None:
    schema: dict[str, Any] = {}
    for _ in range(5000):
        schema = {"items": schema}
    with pytest.raises(SchemaError, match="nested too deeply"):
        check_schema(schema)


# --- violations ---------------------------------------------------------------------------------

ORDER = {
    "type": "object",
    "required": ["id", "lines"],
    "properties": {
        "id": {"type": "string", "minLength": 3},
        "lines": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"qty": {"type": "integer", "minimum": 1}},
                "additionalProperties": False,
            },
        },
    },
}


def test_every_violation_is_reported_with_its_path() -> None:
    errors = validate({"id": "x", "lines": [{"qty": 0}, {"qty": 2.5, "note": "?"}]}, ORDER)
    assert errors == [
        "at /id: expected at least 3 characters, got 1",
        "at /lines/0/qty: expected a number >= 1, got 0",
        "at /lines/1/qty: expected integer, got number 2.5",
        "at /lines/1: property 'note' is not allowed (additionalProperties)",
    ]


def test_missing_required_properties_are_each_named() -> None:
    assert validate({}, ORDER) == [
        "at /: missing required property 'id'",
        "at /: missing required property 'lines'",
    ]


def test_wrong_type_names_expected_and_actual() -> None:
    assert validate("5", {"type": ["integer", "null"]}) == [
        'at /: expected integer or null, got string "5"'
    ]


def test_any_of_reports_why_each_branch_failed() -> None:
    [error] = validate(2, {"anyOf": [{"type": "string"}, {"minimum": 3}]})
    assert "[0] at /: expected string, got integer 2" in error
    assert "[1] at /: expected a number >= 3, got 2" in error


def test_one_of_names_every_matching_branch() -> None:
    assert validate(1, {"oneOf": [{"type": "integer"}, {"minimum": 0}, {"type": "string"}]}) == [
        "at /: matches oneOf schemas 0, 1; exactly one must match"
    ]


def test_long_values_are_shortened_in_messages() -> None:
    [error] = validate("x" * 500, {"maxLength": 3, "type": "string"})
    assert error == "at /: expected at most 3 characters, got 500"
    [error] = validate("y" * 500, {"enum": ["a"]})
    assert "..." in error and len(error) < 120
