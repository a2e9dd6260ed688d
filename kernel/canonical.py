"""Canonical JSON (RFC 8785 / JCS) for everything that is hashed, with a fast exact path.

`canonical_json(value)` returns the RFC 8785 bytes of `value` after mapping it to JSON with one
documented form per Python type:

    dict (string keys only)    -> object, keys sorted by UTF-16 code units
    list, tuple                -> array
    set, frozenset             -> array sorted by each element's canonical bytes
    str                        -> string (a lone surrogate is an error)
    bool, None                 -> true / false / null
    int within +-(2**53 - 1)   -> number; outside that range -> its decimal string
    float                      -> ES6 number form (1.0 -> 1, 1e21 -> 1e+21); NaN and infinities
                                  are errors; -0.0 -> 0
    decimal.Decimal            -> its string, e.g. "10.50" (never a float)
    bytes, bytearray           -> standard base64 string
    datetime, date, time       -> ISO 8601 string
    uuid.UUID                  -> its string
    enum.Enum                  -> its value, mapped again
    pydantic model             -> model_dump(), mapped again
    dataclass instance         -> its fields as an object, mapped again

Anything else (or a non-string dict key) is a CanonicalizationError naming the type.

Fast path: a value made only of dicts with BMP-only string keys, lists, strings, bools, None,
integers within the safe range and non-integral floats of magnitude 1e-4 or more (timestamps,
amounts, scores: `repr` then writes the same shortest digits as ES6, with no exponent) serialises
byte-identically with `json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=False)`,
which is several times faster than the pure-Python `rfc8785` encoder used for everything else.
A property test proves the two agree.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as _dt
import decimal
import enum
import hashlib
import json
import uuid
from typing import Any

import rfc8785
from pydantic import BaseModel

from kernel.errors import CanonicalizationError

MAX_SAFE_INTEGER = 2**53 - 1
_dumps = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode


def _plain_key(key: object) -> bool:
    if type(key) is not str:
        return False
    return key.isascii() or max(key) < "\U00010000"


def is_plain(value: Any) -> bool:
    """True when `json.dumps` is already RFC 8785 for this value (see the module docstring)."""
    kind = type(value)
    if kind is str or kind is bool or value is None:
        return True
    if kind is int:
        return bool(-MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER)
    if kind is float:
        # Outside this domain repr and ES6 differ: "1.0" vs "1", "1e-05" vs "0.00001". The upper
        # bound also refuses infinities; NaN fails both comparisons.
        return 1e-4 <= abs(value) < 1e16 and not value.is_integer()
    if kind is dict:
        return all(_plain_key(k) and is_plain(v) for k, v in value.items())
    if kind is list:
        return all(is_plain(v) for v in value)
    return False


def to_json_value(value: Any, *, exact_integers: bool = False) -> Any:
    """Map `value` to plain JSON types using the documented canonical forms.

    With `exact_integers`, integers of any size stay integers (for storing data, which JSON can
    hold); without it, those outside the safe range become strings (for hashing).
    """
    if value is None or isinstance(value, str | bool):
        return value
    if isinstance(value, enum.Enum):
        return to_json_value(value.value, exact_integers=exact_integers)
    if isinstance(value, int):
        if exact_integers or -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
            return int(value)
        return str(value)
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise CanonicalizationError(f"{value!r} has no canonical JSON form")
        return 0 if value == 0 else value
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise CanonicalizationError(
                    f"dict key {key!r} is a {type(key).__name__}; canonical JSON needs string keys"
                )
            out[key] = to_json_value(item, exact_integers=exact_integers)
        return out
    if isinstance(value, list | tuple):
        return [to_json_value(v, exact_integers=exact_integers) for v in value]
    if isinstance(value, set | frozenset):
        return [
            to_json_value(v, exact_integers=exact_integers)
            for v in sorted(value, key=canonical_json)
        ]
    if isinstance(value, decimal.Decimal):
        if not value.is_finite():
            raise CanonicalizationError(f"{value!r} has no canonical JSON form")
        return str(value)
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, _dt.datetime | _dt.date | _dt.time):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, BaseModel):
        return to_json_value(value.model_dump(), exact_integers=exact_integers)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
        return to_json_value(fields, exact_integers=exact_integers)
    raise CanonicalizationError(
        f"a value of type {type(value).__name__} has no canonical JSON form; "
        "return JSON-compatible data (dict, list, str, int, float, bool, None)"
    )


def canonical_json(value: Any) -> bytes:
    """The RFC 8785 canonical bytes of `value`."""
    try:
        if is_plain(value):
            return _dumps(value).encode("utf-8")
        return rfc8785.dumps(to_json_value(value))
    except UnicodeEncodeError as exc:
        raise CanonicalizationError(f"string is not valid Unicode (lone surrogate): {exc}") from exc
    except rfc8785.CanonicalizationError as exc:
        raise CanonicalizationError(str(exc)) from exc


def canonical_text(value: Any) -> str:
    return canonical_json(value).decode("utf-8")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
