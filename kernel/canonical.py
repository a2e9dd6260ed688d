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
integers within the safe range, integral floats within it (written as the integer, as ES6 does)
and other floats of magnitude 1e-4 or more, below 1e16 (timestamps, amounts, scores: the
shortest round-trip digits are then the ES6 form, with no exponent) serialises byte-identically
with `orjson.dumps(option=OPT_SORT_KEYS)` (keys in code point order, which is UTF-16 order for
BMP keys; raw UTF-8; the JSON short escapes and lowercase `u00XX` escapes for other control
characters), many times faster than the pure-Python `rfc8785` encoder used for everything else.
Property tests (tests/kernel/test_hashing.py) hold the two to the same bytes. Where orjson
refuses a value of the domain (nesting deeper than its limit) the standard library's encoder,
equally exact on the domain, writes it.
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

import orjson
import rfc8785
from pydantic import BaseModel

from kernel.errors import CanonicalizationError

MAX_SAFE_INTEGER = 2**53 - 1
_dumps = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode
_SORTED = orjson.OPT_SORT_KEYS


_NOT_PLAIN: Any = object()


def plain_form(value: Any) -> Any:
    """`value` in the fast path's domain (see the module docstring), or `_NOT_PLAIN`.

    Integral floats in the safe range become ints (`json.dumps` writes 1.0 and -0.0 where ES6
    writes 1 and 0); containers are copied only when something inside them changed, so a value
    already in the domain comes back as the same object.
    """
    kind = type(value)
    if kind is dict:
        copy: dict[str, Any] | None = None
        for key, item in value.items():
            if type(key) is not str or not (key.isascii() or max(key) < "\U00010000"):
                return _NOT_PLAIN
            if _plain_leaf(item):  # most values: no call deeper
                continue
            form = plain_form(item)
            if form is not item:
                if form is _NOT_PLAIN:
                    return _NOT_PLAIN
                if copy is None:
                    copy = dict(value)
                copy[key] = form
        return value if copy is None else copy
    if kind is list:
        items: list[Any] | None = None
        for index, item in enumerate(value):
            if _plain_leaf(item):
                continue
            form = plain_form(item)
            if form is not item:
                if form is _NOT_PLAIN:
                    return _NOT_PLAIN
                if items is None:
                    items = list(value)
                items[index] = form
        return value if items is None else items
    if _plain_leaf(value):
        return value
    if kind is float and value.is_integer() and abs(value) <= MAX_SAFE_INTEGER:
        return int(value)
    return _NOT_PLAIN


def _plain_leaf(value: Any) -> bool:
    """A scalar `json.dumps` already writes as ES6 does (see the module docstring)."""
    kind = type(value)
    if kind is str or value is None or kind is bool:
        return True
    if kind is int:
        return bool(-MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER)
    # Outside this domain repr and ES6 differ: "1e-05" vs "0.00001", "1e+16" vs
    # "10000000000000000". The upper bound also refuses infinities; NaN fails both tests.
    return kind is float and 1e-4 <= abs(value) < 1e16 and not value.is_integer()


def is_plain(value: Any) -> bool:
    """True when `json.dumps` of `value` itself is already RFC 8785 (nothing to convert)."""
    return plain_form(value) is value


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


def plain_bytes(value: Any) -> bytes | None:
    """The RFC 8785 bytes of `value` if it is in the fast path's domain, else None. Those bytes
    parse back (with any JSON parser) to a value whose canonical bytes they are again."""
    form = plain_form(value)
    if form is _NOT_PLAIN:
        return None
    try:
        return orjson.dumps(form, option=_SORTED)
    except orjson.JSONEncodeError:  # a lone surrogate, or deeper than orjson's nesting limit
        try:
            return _dumps(form).encode("utf-8")
        except UnicodeEncodeError as exc:
            raise _lone_surrogate(exc) from exc


def _lone_surrogate(exc: UnicodeEncodeError) -> CanonicalizationError:
    return CanonicalizationError(f"string is not valid Unicode (lone surrogate): {exc}")


def canonical_json(value: Any) -> bytes:
    """The RFC 8785 canonical bytes of `value`."""
    data = plain_bytes(value)
    if data is not None:
        return data
    try:
        return rfc8785.dumps(to_json_value(value))
    except UnicodeEncodeError as exc:
        raise _lone_surrogate(exc) from exc
    except rfc8785.CanonicalizationError as exc:
        raise CanonicalizationError(str(exc)) from exc


def canonical_text(value: Any) -> str:
    return canonical_json(value).decode("utf-8")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
