"""A downstream tool's `inputSchema` applied to a step's arguments.

At load time the validator hands us the literal view of a step's `args` (kernel.tool_args):
what is interpolated cannot be judged yet, so only problems that hold whatever the run fills
in are reported (a missing required argument, an unknown one where the schema forbids extra
properties, a literal of the wrong type). When the step runs, the whole arguments are checked
before anything is sent.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError
from jsonschema.validators import validator_for

from kernel.json_schema import json_type_name
from kernel.tool_args import ArgProblem, holds_interpolated

# Errors about an object's keys, which are always literal in a step's args.
_KEY_RULES = frozenset({"required", "additionalProperties", "propertyNames", "dependentRequired"})


def schema_validator(schema: Mapping[str, Any]) -> Any:
    """A validator for the draft the schema names (2020-12 when it names none, as MCP says)."""
    cls = validator_for(schema, default=Draft202012Validator)
    return cls(schema)


def problems(validator: Any, arguments: Mapping[str, Any]) -> list[ArgProblem]:
    """Every problem with complete arguments."""
    return [_problem(error) for error in _sorted(validator.iter_errors(dict(arguments)))]


def literal_problems(validator: Any, view: Mapping[str, Any]) -> list[ArgProblem]:
    """The problems that no interpolated value could remove."""
    found = []
    for error in _sorted(validator.iter_errors(dict(view))):
        if error.validator not in _KEY_RULES and holds_interpolated(error.instance):
            continue
        found.append(_problem(error))
    return found


def _sorted(errors: Iterable[ValidationError]) -> list[ValidationError]:
    return sorted(errors, key=lambda e: [str(p) for p in e.absolute_path])


def _problem(error: ValidationError) -> ArgProblem:
    field = ".".join(str(part) for part in error.absolute_path)
    return ArgProblem(field, _message(error))


def _message(error: ValidationError) -> str:
    """The schema's expectation in words; a value is quoted only when it is a short literal."""
    rule = error.validator
    expected: Any = error.validator_value
    schema: Any = error.schema
    if rule == "required":
        given = error.instance if isinstance(error.instance, dict) else {}
        missing = [p for p in expected if p not in given]
        return f"missing required argument {', '.join(repr(p) for p in missing)}"
    if rule == "additionalProperties" and isinstance(error.instance, dict):
        known = set(schema.get("properties", {})) if isinstance(schema, dict) else set()
        extra = sorted(k for k in error.instance if k not in known)
        allowed = ", ".join(sorted(known)) or "none"
        return f"unknown argument {', '.join(repr(k) for k in extra)} (the tool takes: {allowed})"
    if rule == "type":
        wanted = expected if isinstance(expected, str) else " or ".join(expected)
        return f"expected {wanted}, got {json_type_name(error.instance)}"
    if rule == "enum":
        return f"expected one of {', '.join(repr(v) for v in expected)}"
    text = str(error.message)
    return text if len(text) <= 160 else text[:157] + "..."
