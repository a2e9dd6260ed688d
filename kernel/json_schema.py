"""A small, exact JSON Schema validator for the subset that programs need (2020-12 semantics).

Supported keywords: type, enum, const, properties, required, additionalProperties, items,
minItems, maxItems, minLength, maxLength, pattern, minimum, maximum, exclusiveMinimum,
exclusiveMaximum, anyOf, oneOf, allOf; boolean schemas (`true`, `false`) anywhere. The annotations
title, description, default, examples, $comment, $schema and $id are accepted and ignored.

Any other keyword (`$ref`, `format`, `patternProperties`, ...) is a SchemaError when the schema is
checked: a constraint that is silently ignored would let a user believe it is enforced.

Semantics follow 2020-12: 3.0 is an integer, a boolean is never a number, `1 == 1.0` but
`true != 1` for enum/const, string lengths count code points, `pattern` is an unanchored search
(Python `re` syntax, which agrees with ECMA-262 on the common constructs).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Sized
from typing import Any

from kernel.errors import LedgerflowError

__all__ = ["TYPES", "SchemaError", "check_schema", "json_type_name", "validate"]

TYPES = ("string", "integer", "number", "boolean", "null", "object", "array")
ANNOTATIONS = frozenset(
    {"title", "description", "default", "examples", "$comment", "$schema", "$id"}
)


class SchemaError(LedgerflowError, ValueError):
    """A schema is malformed or uses an unsupported keyword; `pointer` locates the bad part."""

    def __init__(self, pointer: str, message: str) -> None:
        super().__init__(f"at {pointer or '/'}: {message}")
        self.pointer = pointer


def _join(pointer: str, token: object) -> str:
    """RFC 6901: '~' and '/' inside a token are escaped as '~0' and '~1'."""
    return f"{pointer}/{str(token).replace('~', '~0').replace('/', '~1')}"


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def json_type_name(value: Any) -> str:
    """The JSON type name of a value (the most specific one for numbers)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if _is_number(value):
        return "integer" if _has_type(value, "integer") else "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _got(value: Any) -> str:
    """'string "abc"', 'integer 3', 'null': the type, then the value when it adds anything."""
    if value is None or isinstance(value, bool):
        return _show(value)
    return f"{json_type_name(value)} {_show(value)}"


def _show(value: Any, limit: int = 60) -> str:
    """A short JSON rendering of a value for messages."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --- checking a schema --------------------------------------------------------------------------


def check_schema(schema: Any) -> None:
    """Raise SchemaError (with the JSON pointer of the bad part) unless `schema` is supported."""
    try:
        _check(schema, "")
    except RecursionError:
        raise SchemaError("", "the schema is nested too deeply") from None


def _check(schema: Any, pointer: str) -> None:
    if isinstance(schema, bool):
        return
    if not isinstance(schema, dict):
        got = json_type_name(schema)
        raise SchemaError(pointer, f"a schema must be an object or a boolean, got {got}")
    for key, value in schema.items():
        where = _join(pointer, key)
        if key in ANNOTATIONS:
            continue
        checker = _CHECKERS.get(key) if isinstance(key, str) else None
        if checker is None:
            raise SchemaError(
                where,
                f"keyword {key!r} is not supported, so it could not be enforced; "
                f"supported keywords: {', '.join(sorted(_CHECKERS))}",
            )
        checker(value, where)


def _check_type(value: Any, where: str) -> None:
    names = value if isinstance(value, list) else [value]
    if not names:
        raise SchemaError(where, "'type' must not be an empty list")
    for name in names:
        if name not in TYPES:
            raise SchemaError(where, f"{_show(name)} is not a type; use one of {', '.join(TYPES)}")
    if len(set(names)) != len(names):
        raise SchemaError(where, "'type' lists a type twice")


def _check_enum(value: Any, where: str) -> None:
    if not isinstance(value, list) or not value:
        raise SchemaError(where, "'enum' must be a non-empty array of values")


def _check_any(value: Any, where: str) -> None:
    """const accepts any value."""


def _check_properties(value: Any, where: str) -> None:
    if not isinstance(value, dict):
        raise SchemaError(where, "'properties' must be an object mapping names to schemas")
    for name, sub in value.items():
        _check(sub, _join(where, name))


def _check_required(value: Any, where: str) -> None:
    if not isinstance(value, list) or not all(isinstance(name, str) for name in value):
        raise SchemaError(where, "'required' must be an array of property names")
    if len(set(value)) != len(value):
        raise SchemaError(where, "'required' lists a property twice")


def _check_items(value: Any, where: str) -> None:
    if isinstance(value, list):
        raise SchemaError(
            where, "'items' must be one schema (the array form, tuples, is unsupported)"
        )
    _check(value, where)


def _check_count(value: Any, where: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise SchemaError(where, f"expected a non-negative integer, got {_show(value)}")


def _check_pattern(value: Any, where: str) -> None:
    if not isinstance(value, str):
        raise SchemaError(where, f"'pattern' must be a string, got {json_type_name(value)}")
    try:
        re.compile(value)
    except re.error as exc:
        raise SchemaError(where, f"invalid regular expression {value!r}: {exc}") from None


def _check_bound(value: Any, where: str) -> None:
    if not _is_number(value) or not math.isfinite(value):
        raise SchemaError(where, f"expected a finite number, got {_show(value)}")


def _check_schema_list(value: Any, where: str) -> None:
    if not isinstance(value, list) or not value:
        raise SchemaError(where, "expected a non-empty array of schemas")
    for index, sub in enumerate(value):
        _check(sub, _join(where, index))


_CHECKERS: dict[str, Callable[[Any, str], None]] = {
    "type": _check_type,
    "enum": _check_enum,
    "const": _check_any,
    "properties": _check_properties,
    "required": _check_required,
    "additionalProperties": _check,
    "items": _check_items,
    "minItems": _check_count,
    "maxItems": _check_count,
    "minLength": _check_count,
    "maxLength": _check_count,
    "pattern": _check_pattern,
    "minimum": _check_bound,
    "maximum": _check_bound,
    "exclusiveMinimum": _check_bound,
    "exclusiveMaximum": _check_bound,
    "anyOf": _check_schema_list,
    "oneOf": _check_schema_list,
    "allOf": _check_schema_list,
}


# --- validating an instance ---------------------------------------------------------------------


def validate(instance: Any, schema: Any) -> list[str]:
    """Every violation of `schema` by `instance` as "at /path: message"; empty means valid.

    The schema is checked first (SchemaError), so an unsupported keyword is never ignored.
    """
    check_schema(schema)
    return _errors(instance, schema, "")


def _at(path: str, message: str) -> str:
    return f"at {path or '/'}: {message}"


def _errors(instance: Any, schema: Any, path: str) -> list[str]:
    if schema is True:
        return []
    if schema is False:
        return [_at(path, "no value is allowed here (the schema is false)")]
    found: list[str] = []
    for key, value in schema.items():
        rule = _RULES.get(key)
        if rule is not None:
            found.extend(rule(instance, value, schema, path))
    return found


Rule = Callable[[Any, Any, dict[str, Any], str], list[str]]


def _has_type(instance: Any, name: str) -> bool:
    if name == "integer":
        if isinstance(instance, float):
            return instance.is_integer()  # 2020-12: 3.0 is an integer
        return isinstance(instance, int) and not isinstance(instance, bool)
    if name == "number":
        return _is_number(instance)
    expected = {"string": str, "boolean": bool, "object": dict, "array": list}.get(name)
    return instance is None if expected is None else isinstance(instance, expected)


def _rule_type(instance: Any, value: Any, schema: dict[str, Any], path: str) -> list[str]:
    names = value if isinstance(value, list) else [value]
    if any(_has_type(instance, name) for name in names):
        return []
    return [_at(path, f"expected {' or '.join(names)}, got {_got(instance)}")]


def json_equal(a: Any, b: Any) -> bool:
    """JSON equality: 1 == 1.0, but true != 1 and key order does not matter."""
    if _is_number(a) and _is_number(b):
        return bool(a == b)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    return type(a) is type(b) and bool(a == b)


def _rule_enum(instance: Any, value: Any, schema: dict[str, Any], path: str) -> list[str]:
    if any(json_equal(instance, option) for option in value):
        return []
    return [_at(path, f"expected one of {_show(value)}, got {_show(instance)}")]


def _rule_const(instance: Any, value: Any, schema: dict[str, Any], path: str) -> list[str]:
    if json_equal(instance, value):
        return []
    return [_at(path, f"expected {_show(value)}, got {_show(instance)}")]


def _rule_properties(instance: Any, value: Any, schema: dict[str, Any], path: str) -> list[str]:
    if not isinstance(instance, dict):
        return []
    found: list[str] = []
    for name, sub in value.items():
        if name in instance:
            found.extend(_errors(instance[name], sub, _join(path, name)))
    return found


def _rule_required(instance: Any, value: Any, schema: dict[str, Any], path: str) -> list[str]:
    if not isinstance(instance, dict):
        return []
    return [
        _at(path, f"missing required property {name!r}") for name in value if name not in instance
    ]


def _rule_additional(instance: Any, value: Any, schema: dict[str, Any], path: str) -> list[str]:
    if not isinstance(instance, dict):
        return []
    declared = schema.get("properties", {})
    found: list[str] = []
    for name in instance:
        if name in declared:
            continue
        if value is False:  # the common case gets a message naming the property
            found.append(_at(path, f"property {name!r} is not allowed (additionalProperties)"))
        else:
            found.extend(_errors(instance[name], value, _join(path, name)))
    return found


def _rule_items(instance: Any, value: Any, schema: dict[str, Any], path: str) -> list[str]:
    if not isinstance(instance, list):
        return []
    found: list[str] = []
    for index, item in enumerate(instance):
        found.extend(_errors(item, value, _join(path, index)))
    return found


def _size_rule(kind: type[Sized], unit: str, at_least: bool) -> Rule:
    """minItems/maxItems (arrays) and minLength/maxLength (strings, in code points)."""

    def rule(instance: Any, value: Any, schema: dict[str, Any], path: str) -> list[str]:
        if not isinstance(instance, kind):
            return []
        size = len(instance)
        if (size >= value) if at_least else (size <= value):
            return []
        bound = "at least" if at_least else "at most"
        return [_at(path, f"expected {bound} {value} {unit}, got {size}")]

    return rule


def _rule_pattern(instance: Any, value: Any, schema: dict[str, Any], path: str) -> list[str]:
    if not isinstance(instance, str) or re.search(value, instance):
        return []
    return [_at(path, f"{_show(instance)} does not match the pattern {value!r}")]


def _bound_rule(symbol: str, holds: Callable[[Any, Any], bool]) -> Rule:
    """minimum (>=), maximum (<=), exclusiveMinimum (>), exclusiveMaximum (<) on numbers."""

    def rule(instance: Any, value: Any, schema: dict[str, Any], path: str) -> list[str]:
        if not _is_number(instance) or holds(instance, value):
            return []
        return [_at(path, f"expected a number {symbol} {value}, got {_show(instance)}")]

    return rule


def _branches(instance: Any, value: list[Any], path: str) -> list[list[str]]:
    return [_errors(instance, sub, path) for sub in value]


def _none_matched(keyword: str, results: list[list[str]], path: str) -> str:
    detail = "; ".join(f"[{i}] {'; '.join(errors)}" for i, errors in enumerate(results))
    return _at(path, f"matches none of the {keyword} schemas ({detail})")


def _rule_any_of(instance: Any, value: Any, schema: dict[str, Any], path: str) -> list[str]:
    results = _branches(instance, value, path)
    return [] if any(not errors for errors in results) else [_none_matched("anyOf", results, path)]


def _rule_one_of(instance: Any, value: Any, schema: dict[str, Any], path: str) -> list[str]:
    results = _branches(instance, value, path)
    matched = [i for i, errors in enumerate(results) if not errors]
    if len(matched) == 1:
        return []
    if not matched:
        return [_none_matched("oneOf", results, path)]
    listed = ", ".join(map(str, matched))
    return [_at(path, f"matches oneOf schemas {listed}; exactly one must match")]


def _rule_all_of(instance: Any, value: Any, schema: dict[str, Any], path: str) -> list[str]:
    return [error for errors in _branches(instance, value, path) for error in errors]


_RULES: dict[str, Rule] = {
    "type": _rule_type,
    "enum": _rule_enum,
    "const": _rule_const,
    "properties": _rule_properties,
    "required": _rule_required,
    "additionalProperties": _rule_additional,
    "items": _rule_items,
    "minItems": _size_rule(list, "items", at_least=True),
    "maxItems": _size_rule(list, "items", at_least=False),
    "minLength": _size_rule(str, "characters", at_least=True),
    "maxLength": _size_rule(str, "characters", at_least=False),
    "pattern": _rule_pattern,
    "minimum": _bound_rule(">=", lambda x, b: x >= b),
    "maximum": _bound_rule("<=", lambda x, b: x <= b),
    "exclusiveMinimum": _bound_rule(">", lambda x, b: x > b),
    "exclusiveMaximum": _bound_rule("<", lambda x, b: x < b),
    "anyOf": _rule_any_of,
    "oneOf": _rule_one_of,
    "allOf": _rule_all_of,
}
