"""Governance envelopes: the hash-chained records of the audit ledger, one per runtime event.

An envelope says what happened (`kind`, `status`), to which run and step (`execution_id`,
`step_id`), under which policy (`policy_hash`), with which kernel state afterwards
(`canonical_snapshot_hash`) and what the step produced (`payload`, opaque JSON). Envelopes are
numbered gaplessly from 0 (`seq`) and chained:

    entry_hash = SHA-256(b"ledgerflow.envelope.v1\\x00" || bytes.fromhex(prev_hash)
                         || JCS(envelope without entry_hash))

where JCS is RFC 8785 (`kernel.canonical.canonical_json`), `prev_hash` is the previous envelope's
`entry_hash` and the first envelope's `prev_hash` is `GENESIS_HASH` (64 zeros). Hashes are
lowercase hex.

Values that are hashed have exactly one form:

- `recorded_at` is an integer count of microseconds since the Unix epoch (never a float);
- `payload` is stored as the JSON value its canonical form parses back to. Integers beyond
  +-(2**53 - 1), decimals, bytes, datetimes and the like take the documented strings of
  `kernel.canonical`. Floats are accepted and hashed in their RFC 8785 (ES6) form, so `1.0`
  comes back from the store as `1` and hashes the same; an integral float beyond 2**53 becomes a
  string, as a big integer does; NaN and infinities are refused. The canonical text of the
  payload is thus what is stored, and a verifier in any language re-hashes it by parsing it and
  applying RFC 8785.

The erase convention (checked by `governance.verify`): an `erase` envelope records an erasure
for its own `execution_id` and for every id listed in its payload's `"execution_ids"` (a list of
strings; the payload may also carry `"refs"` and `"subject"`). A payload may hold
`kernel.capability.TOMBSTONE` only in an execution such an erasure covered earlier in the log.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from enum import StrEnum
from json.encoder import encode_basestring
from typing import Annotated, Any

import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    StrictInt,
    StrictStr,
    field_validator,
)

from kernel.canonical import MAX_SAFE_INTEGER, canonical_json, plain_bytes
from kernel.capability import TOMBSTONE
from kernel.errors import CanonicalizationError

DOMAIN = b"ledgerflow.envelope.v1\x00"
GENESIS_HASH = "0" * 64

_HEX64 = re.compile(r"[0-9a-f]{64}")
_LONG_DIGITS = re.compile(rb"[0-9]{16}")
# What json.JSONEncoder(ensure_ascii=False).encode does for a str, without its Python wrapper.
_string = encode_basestring

HexHash = Annotated[StrictStr, Field(pattern=r"^[0-9a-f]{64}$")]
SafeInt = Annotated[StrictInt, Field(ge=0, le=MAX_SAFE_INTEGER)]


class EnvelopeKind(StrEnum):
    """What an envelope records. Checkpoints are not envelopes: they sign the log from outside."""

    STEP = "step"  # a step record; payload: the projected step output
    RUN_STARTED = "run_started"
    RUN_FINISHED = "run_finished"
    SUSPEND = "suspend"
    RESUME = "resume"
    ERASE = "erase"  # an erasure; payload: {"refs": [...], "execution_ids": [...], "subject": ...}
    ACCESS = "access"  # something read a secret or an audit record
    DENIED = "denied"  # the policy refused an action; payload says which and why
    POLICY = "policy"  # a new policy took effect (the envelope's policy_hash); payload: its name
    # A pass-through call of a downstream tool by an MCP client (no run): principal, server,
    # tool, projected arguments and output, outcome, duration.
    TOOL_CALL = "tool_call"


def canonical_payload(value: Any) -> tuple[Any, bytes]:
    """The stored form of a payload and its RFC 8785 bytes (see the module docstring).

    The value returned is a fresh copy: later changes to `value` cannot reach an envelope.
    """
    data = plain_bytes(value)
    if data is not None:  # the fast path's bytes parse back to their own canonical form
        return orjson.loads(data), data
    data = canonical_json(value)
    stored = json.loads(data)
    if _LONG_DIGITS.search(data):
        # An integral float beyond 2**53 (16+ digits) is written as a number but parses back as
        # an int, which hashes as a string: take that second form, which is stable.
        again = canonical_json(stored)
        if again != data:
            data, stored = again, json.loads(again)
    return stored, data


def _text(value: str | None) -> bytes:
    if value is None:
        return b"null"
    return _string(value).encode()


def hash_body(
    *,
    seq: int,
    execution_id: str,
    step_id: str | None,
    kind: str,
    status: str | None,
    policy_hash: str,
    canonical_snapshot_hash: str | None,
    payload_bytes: bytes,
    recorded_at: int,
    prev_hash: str,
) -> bytes:
    """RFC 8785 bytes of the envelope without `entry_hash`, given the payload's canonical bytes.

    The keys are fixed and already in JCS order, so the object is assembled around the payload
    instead of re-serialising it; a test holds this to `rfc8785.dumps` of the whole object.
    """
    try:
        return b"".join(
            (
                b'{"canonical_snapshot_hash":',
                _text(canonical_snapshot_hash),
                b',"execution_id":',
                _text(execution_id),
                b',"kind":',
                _text(kind),
                b',"payload":',
                payload_bytes,
                b',"policy_hash":',
                _text(policy_hash),
                b',"prev_hash":',
                _text(prev_hash),
                b',"recorded_at":',
                str(recorded_at).encode(),
                b',"seq":',
                str(seq).encode(),
                b',"status":',
                _text(status),
                b',"step_id":',
                _text(step_id),
                b"}",
            )
        )
    except UnicodeEncodeError as exc:
        raise CanonicalizationError(f"string is not valid Unicode (lone surrogate): {exc}") from exc


def chain_hash(prev_hash: str, body: bytes) -> str:
    """SHA-256(domain || prev_hash bytes || body) in hex: the entry hash of an envelope."""
    return hashlib.sha256(DOMAIN + bytes.fromhex(prev_hash) + body).hexdigest()


def stored_entry_hash(
    seq: int,
    execution_id: str,
    step_id: str | None,
    kind: str,
    status: str | None,
    policy_hash: str,
    canonical_snapshot_hash: str | None,
    payload_bytes: bytes,
    recorded_at: int,
    prev_hash: str,
) -> str:
    """The entry hash of a stored envelope, its payload taken as stored: the verifier's fast
    path (no parsing or re-canonicalising of the payload). Arguments in `EnvelopeRow` order.

    The values come from storage, so their types are checked too: every field's form is checked
    as `EnvelopeDraft.build` and `seal` do (ValueError). The result equals the envelope's entry
    hash only if the stored payload bytes are exactly the ones it was sealed with, which the
    writer made canonical.
    """
    _check_count("seq", seq)
    _check_count("recorded_at", recorded_at)
    _check_text("execution_id", execution_id)
    _check_text("step_id", step_id, optional=True)
    _check_text("status", status, optional=True)
    _check_hex("policy_hash", policy_hash)
    _check_hex("canonical_snapshot_hash", canonical_snapshot_hash, optional=True)
    _check_hex("prev_hash", prev_hash)
    body = hash_body(
        seq=seq,
        execution_id=execution_id,
        step_id=step_id,
        kind=_check_kind(kind).value,
        status=status,
        policy_hash=policy_hash,
        canonical_snapshot_hash=canonical_snapshot_hash,
        payload_bytes=payload_bytes,
        recorded_at=recorded_at,
        prev_hash=prev_hash,
    )
    return chain_hash(prev_hash, body)


class GovernanceEnvelope(BaseModel):
    """One sealed audit record. Immutable; `entry_hash` is not checked on construction.

    Build new envelopes with `EnvelopeDraft.build(...).seal(...)` (the ledger does); validating a
    dict (a proof bundle, an export line) checks every field's form, and `hash_ok()` then tells
    whether `entry_hash` matches the contents.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    seq: SafeInt
    execution_id: Annotated[StrictStr, Field(min_length=1)]
    step_id: StrictStr | None = None
    kind: EnvelopeKind
    status: StrictStr | None = None
    policy_hash: HexHash
    canonical_snapshot_hash: HexHash | None = None
    payload: Any = None
    recorded_at: SafeInt
    prev_hash: HexHash
    entry_hash: HexHash

    # The payload's RFC 8785 bytes when the envelope was sealed here (computed once, for the
    # hash, and reused for the stored row); None for one validated from outside.
    _payload_bytes: bytes | None = PrivateAttr(default=None)

    @field_validator("payload", mode="before")
    @classmethod
    def _canonical(cls, value: Any) -> Any:
        return canonical_payload(value)[0]

    def __eq__(self, other: object) -> bool:
        # The fields alone: whether the payload's bytes are cached says nothing about it.
        if not isinstance(other, GovernanceEnvelope):
            return NotImplemented
        return self.__dict__ == other.__dict__

    def __hash__(self) -> int:
        return hash(self.entry_hash)

    def payload_bytes(self) -> bytes:
        """The RFC 8785 bytes of the payload (what the store keeps, as text)."""
        cached = self._payload_bytes
        return canonical_json(self.payload) if cached is None else cached

    def body(self) -> bytes:
        """RFC 8785 bytes of this envelope without `entry_hash`: what the hash covers."""
        return hash_body(
            seq=self.seq,
            execution_id=self.execution_id,
            step_id=self.step_id,
            kind=self.kind.value,
            status=self.status,
            policy_hash=self.policy_hash,
            canonical_snapshot_hash=self.canonical_snapshot_hash,
            payload_bytes=self.payload_bytes(),
            recorded_at=self.recorded_at,
            prev_hash=self.prev_hash,
        )

    def compute_entry_hash(self) -> str:
        """The entry hash these contents and `prev_hash` give."""
        return chain_hash(self.prev_hash, self.body())

    def hash_ok(self) -> bool:
        """True when `entry_hash` is the hash of the contents."""
        return self.compute_entry_hash() == self.entry_hash

    @property
    def has_tombstone(self) -> bool:
        """True when the payload holds the erasure placeholder anywhere (key or value)."""
        return TOMBSTONE.encode() in self.payload_bytes()


_ENVELOPE_FIELDS = frozenset(GovernanceEnvelope.model_fields)


def _check_hex(name: str, value: object, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if type(value) is not str or not _HEX64.fullmatch(value):
        raise ValueError(f"{name} must be 64 lowercase hex digits, got {value!r}")


def _check_text(name: str, value: object, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not isinstance(value, str) or (not optional and not value):
        raise ValueError(f"{name} must be a non-empty string, got {value!r}")


def _check_kind(kind: str) -> EnvelopeKind:
    try:
        return EnvelopeKind(kind)
    except ValueError:
        known = ", ".join(k.value for k in EnvelopeKind)
        raise ValueError(f"kind {kind!r} is not one of: {known}") from None


def _check_count(name: str, value: object) -> int:
    if type(value) is not int or not 0 <= value <= MAX_SAFE_INTEGER:
        raise ValueError(f"{name} must be an integer in 0..2**53-1, got {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class EnvelopeDraft:
    """An envelope's contents, validated, before the ledger's writer numbers and chains it.

    `payload` is already in stored form and `payload_bytes` is its RFC 8785 encoding, so sealing
    only hashes. Build with `EnvelopeDraft.build`.
    """

    execution_id: str
    kind: EnvelopeKind
    step_id: str | None
    status: str | None
    policy_hash: str
    canonical_snapshot_hash: str | None
    payload: Any
    payload_bytes: bytes

    @classmethod
    def build(
        cls,
        *,
        execution_id: str,
        kind: EnvelopeKind | str,
        policy_hash: str,
        step_id: str | None = None,
        status: str | None = None,
        payload: Any = None,
        canonical_snapshot_hash: str | None = None,
    ) -> EnvelopeDraft:
        """Validate the contents (ValueError naming the field) and canonicalise the payload."""
        _check_text("execution_id", execution_id)
        _check_text("step_id", step_id, optional=True)
        _check_text("status", status, optional=True)
        _check_hex("policy_hash", policy_hash)
        _check_hex("canonical_snapshot_hash", canonical_snapshot_hash, optional=True)
        kind = _check_kind(kind)
        # A StrEnum member (e.g. a kernel status) is stored as its plain value.
        execution_id = str(execution_id)
        step_id = None if step_id is None else str(step_id)
        status = None if status is None else str(status)
        stored, data = canonical_payload(payload)
        if kind is EnvelopeKind.ERASE:
            erased_executions(execution_id, kind, stored)  # checks the payload's shape
        return cls(
            execution_id, kind, step_id, status, policy_hash, canonical_snapshot_hash, stored, data
        )

    @property
    def has_tombstone(self) -> bool:
        """True when the payload holds the erasure placeholder anywhere."""
        return TOMBSTONE.encode() in self.payload_bytes

    def seal(self, seq: int, prev_hash: str, recorded_at: int) -> GovernanceEnvelope:
        """The envelope at `seq` after `prev_hash`, recorded at `recorded_at` (microseconds)."""
        _check_count("seq", seq)
        _check_count("recorded_at", recorded_at)
        _check_hex("prev_hash", prev_hash)
        entry_hash = chain_hash(
            prev_hash,
            hash_body(
                seq=seq,
                execution_id=self.execution_id,
                step_id=self.step_id,
                kind=self.kind.value,
                status=self.status,
                policy_hash=self.policy_hash,
                canonical_snapshot_hash=self.canonical_snapshot_hash,
                payload_bytes=self.payload_bytes,
                recorded_at=recorded_at,
                prev_hash=prev_hash,
            ),
        )
        # Every field was validated above or in `build`: skip pydantic's second pass (hot path,
        # as kernel.trace.StepRecord.built does; a test holds the result to model_validate's).
        envelope = object.__new__(GovernanceEnvelope)
        _set = object.__setattr__
        _set(
            envelope,
            "__dict__",
            {
                "seq": seq,
                "execution_id": self.execution_id,
                "step_id": self.step_id,
                "kind": self.kind,
                "status": self.status,
                "policy_hash": self.policy_hash,
                "canonical_snapshot_hash": self.canonical_snapshot_hash,
                "payload": self.payload,
                "recorded_at": recorded_at,
                "prev_hash": prev_hash,
                "entry_hash": entry_hash,
            },
        )
        _set(envelope, "__pydantic_fields_set__", _ENVELOPE_FIELDS)
        _set(envelope, "__pydantic_extra__", None)
        _set(envelope, "__pydantic_private__", {"_payload_bytes": self.payload_bytes})
        return envelope


def erased_executions(execution_id: str, kind: str, payload: Any) -> frozenset[str]:
    """The executions an envelope records an erasure for (empty unless `kind` is erase).

    Raises ValueError when an erase payload is not an object or its "execution_ids" is not a list
    of strings.
    """
    if kind != EnvelopeKind.ERASE:
        return frozenset()
    if not isinstance(payload, dict):
        raise ValueError(f"an erase envelope's payload must be an object, got {payload!r}")
    listed = payload.get("execution_ids", [])
    if not isinstance(listed, list) or not all(isinstance(item, str) for item in listed):
        raise ValueError(f"erase payload 'execution_ids' must be a list of strings: {listed!r}")
    return frozenset((execution_id, *listed))
