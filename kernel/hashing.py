"""The chained state hash of a run.

    h_init = SHA-256("ledgerflow.state.v1" || JCS({"context": context, "program": program_hash}))
    h_i    = SHA-256(h_{i-1} || JCS({"error", "output", "status", "step_id"} of step record i))

over raw 32-byte digests and RFC 8785 canonical JSON. Times, durations, attempts and usage are left
out: they vary between otherwise identical runs. The record bytes are assembled around the output's
canonical form directly (the keys are fixed and already sorted); a test checks them against
`rfc8785` on the full record.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from kernel.canonical import canonical_json
from kernel.errors import CanonicalizationError

_INIT_TAG = b"ledgerflow.state.v1"
_string = json.JSONEncoder(ensure_ascii=False).encode


def initial_hash(program_hash: str, context: Any) -> bytes:
    return hashlib.sha256(
        _INIT_TAG + canonical_json({"context": context, "program": program_hash})
    ).digest()


def _value_bytes(value: Any) -> bytes:
    # The frequent scalar outputs, without the general path's type walk.
    if value is None:
        return b"null"
    kind = type(value)
    if kind is str:
        return _string(value).encode()
    if kind is bool:
        return b"true" if value else b"false"
    return canonical_json(value)


def record_bytes(step_id: str, status: str, output: Any, error: str | None) -> bytes:
    """RFC 8785 bytes of {"error", "output", "status", "step_id"} with these values."""
    try:
        return b"".join(
            (
                b'{"error":',
                _value_bytes(error),
                b',"output":',
                _value_bytes(output),
                b',"status":',
                _string(status).encode(),
                b',"step_id":',
                _string(step_id).encode(),
                b"}",
            )
        )
    except UnicodeEncodeError as exc:
        raise CanonicalizationError(f"string is not valid Unicode (lone surrogate): {exc}") from exc


def chain(previous: bytes, record: bytes) -> bytes:
    return hashlib.sha256(previous + record).digest()
