"""Typed LLM outputs: turn a model's reply into the value a step's `output_schema` asks for.

`output_schema` is a shorthand or a JSON Schema object (the subset in `kernel.json_schema`):

    "json"   any JSON value
    "int"    10, "10", " 10 ", 10.0 -> 10 (10.5 and "ten" are rejected)
    "float"  any finite number (or a string holding one) -> float
    "bool"   true/false/yes/no in any case, or a JSON boolean -> bool
    {...}    JSON validated against the schema

The reply is stripped; if it is not JSON as a whole, the content of its first fenced block
(```json ... ``` or ``` ... ```) is used instead, since models often wrap JSON in fences. The whole
reply is tried first because a JSON string value may itself contain a fence.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from typing import Any

from kernel.errors import LedgerflowError
from kernel.json_schema import SchemaError, check_schema, validate

__all__ = ["SHORTHANDS", "StructuredOutputError", "check_output_schema", "parse_output"]

SHORTHANDS = ("json", "int", "float", "bool")
EXCERPT_LENGTH = 120
_FENCE = re.compile(r"```[ \t]*(?:json\b)?(.*?)```", re.DOTALL | re.IGNORECASE)
_TRUE = frozenset({"true", "yes"})
_FALSE = frozenset({"false", "no"})


class StructuredOutputError(LedgerflowError, ValueError):
    """A reply does not hold what the output schema expects; the message says both."""


class _NotJSON(Exception):
    """Internal: the text is not JSON (the message is the decoder's reason)."""


def check_output_schema(schema: str | dict[str, Any]) -> None:
    """Raise SchemaError unless `schema` is a known shorthand or a supported JSON Schema."""
    if isinstance(schema, str):
        if schema not in SHORTHANDS:
            raise SchemaError(
                "",
                f"unknown shorthand {schema!r}; use one of {', '.join(SHORTHANDS)} "
                "or a JSON Schema object",
            )
        return
    check_schema(schema)


def parse_output(text: str, schema: str | dict[str, Any]) -> Any:
    """The reply `text` as the value `schema` describes, or StructuredOutputError saying why not."""
    candidate, value = _read(text)
    if isinstance(schema, dict):
        return _schema_value(candidate, value, schema)
    convert = _CONVERTERS.get(schema)
    if convert is None:
        raise StructuredOutputError(f"unknown output_schema {schema!r}")
    return convert(candidate, value)


# --- reading the reply --------------------------------------------------------------------------

_MISSING: Any = object()  # the candidate text is not JSON


def _finite_float(literal: str) -> float:
    number = float(literal)
    if not math.isfinite(number):
        raise ValueError(f"number {literal} is out of range")
    return number


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _load(text: str) -> Any:
    """Strict JSON: no NaN/Infinity, no out-of-range numbers, no lone surrogates."""
    try:
        value = json.loads(text, parse_float=_finite_float, parse_constant=_no_constant)
        # A lone surrogate ("\\ud800") decodes but has no canonical form; find it now.
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except (ValueError, RecursionError) as exc:  # UnicodeError is a ValueError
        raise _NotJSON(str(exc) or type(exc).__name__) from None
    return value


def _read(text: str) -> tuple[str, Any]:
    """(the text that holds the answer, its JSON value or _MISSING)."""
    stripped = text.strip()
    try:
        return stripped, _load(stripped)
    except _NotJSON:
        pass
    match = _FENCE.search(stripped)
    if match is None:
        return stripped, _MISSING
    inner = match.group(1).strip()
    try:
        return inner, _load(inner)
    except _NotJSON:
        return inner, _MISSING


def _excerpt(text: str) -> str:
    if not text:
        return "an empty reply"
    if len(text) <= EXCERPT_LENGTH:
        return repr(text)
    return f"{text[:EXCERPT_LENGTH]!r}... ({len(text)} characters)"


def _reason(text: str) -> str:
    try:
        _load(text)
    except _NotJSON as exc:
        return str(exc)
    return "valid JSON"


# --- conversions --------------------------------------------------------------------------------


def _schema_value(candidate: str, value: Any, schema: dict[str, Any]) -> Any:
    if value is _MISSING:
        raise StructuredOutputError(
            f"expected JSON matching the output schema, got {_excerpt(candidate)} "
            f"({_reason(candidate)})"
        )
    try:
        violations = validate(value, schema)
    except (SchemaError, RecursionError) as exc:
        raise StructuredOutputError(f"the output schema cannot be applied: {exc}") from None
    if violations:
        raise StructuredOutputError(
            f"reply does not match the output schema: {'; '.join(violations)}; "
            f"got {_excerpt(candidate)}"
        )
    return value


def _as_json(candidate: str, value: Any) -> Any:
    if value is _MISSING:
        raise StructuredOutputError(
            f"expected JSON, got {_excerpt(candidate)} ({_reason(candidate)})"
        )
    return value


def _number(value: Any) -> int | float | None:
    """A JSON number, or a JSON string holding exactly one; never a boolean."""
    if isinstance(value, str):
        try:
            value = _load(value.strip())
        except _NotJSON:
            return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value
    return None


def _as_int(candidate: str, value: Any) -> int:
    number = _number(value)
    if isinstance(number, float) and number.is_integer():
        return int(number)
    if isinstance(number, int):
        return number
    whole = " (not a whole number)" if number is not None else ""
    raise StructuredOutputError(f"expected an integer, got {_excerpt(candidate)}{whole}")


def _as_float(candidate: str, value: Any) -> float:
    number = _number(value)
    if number is not None:
        try:
            return float(number)
        except OverflowError:  # an integer literal with hundreds of digits
            raise StructuredOutputError(
                f"expected a number, got {_excerpt(candidate)} (too large for a float)"
            ) from None
    raise StructuredOutputError(f"expected a number, got {_excerpt(candidate)}")


def _as_bool(candidate: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    word = value if isinstance(value, str) else candidate
    word = word.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise StructuredOutputError(f"expected true/false or yes/no, got {_excerpt(candidate)}")


_CONVERTERS: dict[str, Callable[[str, Any], Any]] = {
    "json": _as_json,
    "int": _as_int,
    "float": _as_float,
    "bool": _as_bool,
}
