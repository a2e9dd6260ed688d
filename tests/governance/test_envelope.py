"""Envelopes and policy snapshots: known answers computed with hashlib + rfc8785 directly, the
canonical forms of payloads, field validation and the erase convention."""

from __future__ import annotations

import decimal
import hashlib
import json
from typing import Any

import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from governance.envelope import (
    DOMAIN,
    GENESIS_HASH,
    EnvelopeDraft,
    EnvelopeKind,
    GovernanceEnvelope,
    canonical_payload,
    erased_executions,
)
from governance.policy import PolicySnapshot
from kernel.capability import TOMBSTONE
from kernel.errors import CanonicalizationError
from kernel.statuses import StepStatus
from tests.json_strategies import plain_json

KAT_POLICY = PolicySnapshot(
    name="kat",
    tools_allow=["refund", "lookup"],
    tools_deny=["delete"],
    models_allow=["gpt-4o"],
    max_steps=50,
    max_tokens=10_000,
    max_cost_usd="12.50",
    max_duration_seconds=600,
    redact_fields=["card_*", "ssn"],
)
KAT_POLICY_HASH = "b9ee37c5b4a780ec58262cade98b40a2c824a91daec783a9ba5eb263f418135f"
KAT_PAYLOAD = {"amount": 250, "note": "café ✓", "ok": True, "items": [1, "two", None]}
KAT_SNAPSHOT = "ab" * 32
KAT_AT = 1_700_000_000_123_456
KAT_ENTRY_HASH = "269cbe8a5a538ddcbecad66d08e511b80b198acb70f515b8ebc7b26caff722ab"


def independent_hash(prev_hash: str, fields: dict[str, Any]) -> str:
    """The spec's formula with nothing from ledgerflow: hashlib and the rfc8785 package."""
    data = b"ledgerflow.envelope.v1\x00" + bytes.fromhex(prev_hash) + rfc8785.dumps(fields)
    return hashlib.sha256(data).hexdigest()


def kat_fields(**changes: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "seq": 0,
        "execution_id": "run-42",
        "step_id": "charge",
        "kind": "step",
        "status": "SUCCESS",
        "policy_hash": KAT_POLICY_HASH,
        "canonical_snapshot_hash": KAT_SNAPSHOT,
        "payload": KAT_PAYLOAD,
        "recorded_at": KAT_AT,
        "prev_hash": GENESIS_HASH,
    }
    fields.update(changes)
    return fields


def draft(**changes: Any) -> EnvelopeDraft:
    fields: dict[str, Any] = {
        "execution_id": "run-42",
        "kind": EnvelopeKind.STEP,
        "policy_hash": KAT_POLICY_HASH,
        "step_id": "charge",
        "status": "SUCCESS",
        "payload": KAT_PAYLOAD,
        "canonical_snapshot_hash": KAT_SNAPSHOT,
    }
    fields.update(changes)
    return EnvelopeDraft.build(**fields)


# -- known answers ---------------------------------------------------------------------------


def test_policy_hash_known_answer() -> None:
    body = rfc8785.dumps(
        {
            "name": "kat",
            "tools_allow": ["lookup", "refund"],
            "tools_deny": ["delete"],
            "models_allow": ["gpt-4o"],
            "max_steps": 50,
            "max_tokens": 10000,
            "max_cost_usd": "12.5",
            "max_duration_seconds": 600,
            "redact_fields": ["card_*", "ssn"],
        }
    )
    assert hashlib.sha256(body).hexdigest() == KAT_POLICY_HASH
    assert KAT_POLICY.canonical_bytes() == body
    assert KAT_POLICY.policy_hash == KAT_POLICY_HASH


def test_envelope_hash_known_answer() -> None:
    assert independent_hash(GENESIS_HASH, kat_fields()) == KAT_ENTRY_HASH
    envelope = draft().seal(0, GENESIS_HASH, KAT_AT)
    assert envelope.entry_hash == KAT_ENTRY_HASH
    assert envelope.body() == rfc8785.dumps(kat_fields())
    assert envelope.hash_ok()


def test_chained_known_answer() -> None:
    first = draft().seal(0, GENESIS_HASH, KAT_AT)
    second = draft(step_id=None, status=None, payload=None, canonical_snapshot_hash=None).seal(
        1, first.entry_hash, KAT_AT + 1
    )
    fields = kat_fields(
        seq=1,
        step_id=None,
        status=None,
        payload=None,
        canonical_snapshot_hash=None,
        recorded_at=KAT_AT + 1,
        prev_hash=KAT_ENTRY_HASH,
    )
    assert second.prev_hash == KAT_ENTRY_HASH
    assert second.entry_hash == independent_hash(KAT_ENTRY_HASH, fields)


def test_domain_separates_envelopes_from_other_hashes() -> None:
    assert DOMAIN == b"ledgerflow.envelope.v1\x00"
    envelope = draft().seal(0, GENESIS_HASH, KAT_AT)
    plain = hashlib.sha256(bytes(32) + envelope.body()).hexdigest()
    assert plain != envelope.entry_hash


json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**60), max_value=2**60)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(
    payload=json_values,
    execution_id=st.text(min_size=1),
    step_id=st.none() | st.text(),
    status=st.none() | st.text(),
    seq=st.integers(min_value=0, max_value=2**53 - 1),
    at=st.integers(min_value=0, max_value=2**53 - 1),
)
def test_spliced_body_is_rfc8785(
    payload: Any, execution_id: str, step_id: str | None, status: str | None, seq: int, at: int
) -> None:
    try:
        built = draft(execution_id=execution_id, step_id=step_id, status=status, payload=payload)
    except CanonicalizationError:  # lone surrogates have no canonical form
        return
    envelope = built.seal(seq, "cd" * 32, at)
    # The stored payload is a fixed point: re-reading and re-encoding it gives the same bytes.
    assert rfc8785.dumps(json.loads(built.payload_bytes)) == built.payload_bytes
    assert json.loads(built.payload_bytes) == envelope.payload
    expected = kat_fields(
        seq=seq,
        execution_id=execution_id,
        step_id=step_id,
        status=status,
        payload=envelope.payload,
        recorded_at=at,
        prev_hash="cd" * 32,
    )
    assert envelope.body() == rfc8785.dumps(expected)
    assert envelope.entry_hash == independent_hash("cd" * 32, expected)


# -- payload canonical forms -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "stored", "text"),
    [
        (1.0, 1, b"1"),
        (-0.0, 0, b"0"),
        (1e21, 1e21, b"1e+21"),
        (0.1, 0.1, b"0.1"),
        (2**60, str(2**60), b'"1152921504606846976"'),
        (float(2**53), str(2**53), b'"9007199254740992"'),
        (decimal.Decimal("10.50"), "10.50", b'"10.50"'),
        (("a", 1), ["a", 1], b'["a",1]'),
        (b"\x00\xff", "AP8=", b'"AP8="'),
        ({"b": 1, "a": [True, None]}, {"a": [True, None], "b": 1}, b'{"a":[true,null],"b":1}'),
    ],
)
def test_payload_canonical_forms(value: Any, stored: Any, text: bytes) -> None:
    assert canonical_payload(value) == (stored, text)
    # What the store returns hashes like what was appended.
    assert canonical_payload(json.loads(text))[1] == text


@settings(max_examples=300)
@given(plain_json)
def test_a_fast_path_payload_is_stored_as_its_bytes_read_back(value: Any) -> None:
    stored, text = canonical_payload(value)
    assert text == rfc8785.dumps(value)
    assert stored == json.loads(text)  # what a reader of the store gets
    assert canonical_payload(stored)[1] == text
    if isinstance(value, dict | list):
        assert stored is not value  # a copy: later changes to the value cannot reach it


@pytest.mark.parametrize("value", [float("nan"), float("inf"), {1: "x"}, object(), "\ud800"])
def test_payload_without_canonical_form_is_refused(value: Any) -> None:
    with pytest.raises(CanonicalizationError):
        draft(payload=value)


def test_payload_is_copied() -> None:
    payload: dict[str, Any] = {"items": [1, 2]}
    envelope = draft(payload=payload).seal(0, GENESIS_HASH, KAT_AT)
    payload["items"].append(3)
    assert envelope.payload == {"items": [1, 2]}
    assert envelope.hash_ok()


# -- validation ------------------------------------------------------------------------------


def test_sealed_envelope_round_trips_through_json() -> None:
    envelope = draft(payload={"x": 1.5, "n": 2**60}).seal(7, "ef" * 32, KAT_AT)
    again = GovernanceEnvelope.model_validate(json.loads(envelope.model_dump_json()))
    assert again == envelope
    assert again.hash_ok()
    assert GovernanceEnvelope.model_validate_json(envelope.model_dump_json()) == envelope


def test_envelope_is_frozen_and_closed() -> None:
    envelope = draft().seal(0, GENESIS_HASH, KAT_AT)
    with pytest.raises(ValidationError):
        envelope.seq = 1  # type: ignore[misc]
    data = envelope.model_dump(mode="json")
    with pytest.raises(ValidationError, match="extra"):
        GovernanceEnvelope.model_validate({**data, "note": "x"})


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("seq", -1),
        ("seq", True),
        ("seq", 2**53),
        ("seq", 1.0),
        ("recorded_at", 1.7e15),
        ("recorded_at", "2024-01-01T00:00:00Z"),
        ("kind", "checkpoint"),
        ("policy_hash", "AB" * 32),
        ("prev_hash", "ab" * 31),
        ("entry_hash", None),
        ("canonical_snapshot_hash", "zz" * 32),
        ("execution_id", ""),
    ],
)
def test_envelope_fields_are_validated(field: str, value: Any) -> None:
    data = draft().seal(0, GENESIS_HASH, KAT_AT).model_dump(mode="json")
    with pytest.raises(ValidationError):
        GovernanceEnvelope.model_validate({**data, field: value})


def test_tampered_envelope_fails_hash_check() -> None:
    data = draft().seal(0, GENESIS_HASH, KAT_AT).model_dump(mode="json")
    data["payload"]["amount"] = 251
    assert not GovernanceEnvelope.model_validate(data).hash_ok()


@pytest.mark.parametrize(
    "changes",
    [
        {"execution_id": ""},
        {"kind": "checkpoint"},
        {"policy_hash": "nope"},
        {"canonical_snapshot_hash": "ab"},
        {"step_id": 3},
    ],
)
def test_draft_validation(changes: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        draft(**changes)


@pytest.mark.parametrize(
    ("seq", "prev", "at"),
    [(-1, GENESIS_HASH, 0), (0, "x", 0), (0, GENESIS_HASH, 1.5), (True, GENESIS_HASH, 0)],
)
def test_seal_validation(seq: Any, prev: Any, at: Any) -> None:
    with pytest.raises(ValueError):
        draft().seal(seq, prev, at)


def test_status_enum_is_stored_as_its_value() -> None:
    envelope = draft(status=StepStatus.FAILED).seal(0, GENESIS_HASH, KAT_AT)
    assert type(envelope.status) is str
    assert envelope.status == "FAILED"


def test_kinds_are_a_small_documented_set() -> None:
    assert {kind.value for kind in EnvelopeKind} == {
        "step",
        "run_started",
        "run_finished",
        "suspend",
        "resume",
        "erase",
        "access",
        "policy",
        "denied",
        "tool_call",
    }


# -- erase convention ------------------------------------------------------------------------


def test_erased_executions() -> None:
    assert erased_executions("r1", "step", {"execution_ids": ["x"]}) == frozenset()
    assert erased_executions("r1", "erase", {"refs": ["a"]}) == {"r1"}
    assert erased_executions("r1", "erase", {"execution_ids": ["r2", "r3"]}) == {"r1", "r2", "r3"}
    with pytest.raises(ValueError, match="object"):
        erased_executions("r1", "erase", ["r2"])
    with pytest.raises(ValueError, match="list of strings"):
        draft(kind="erase", payload={"execution_ids": "r2"})


def test_tombstone_detection() -> None:
    assert draft(payload={"card": TOMBSTONE}).has_tombstone
    assert draft(payload={"note": f"was {TOMBSTONE} here"}).seal(0, GENESIS_HASH, 0).has_tombstone
    assert not draft(payload={"card": "vault://secret/abc"}).has_tombstone


# -- policies --------------------------------------------------------------------------------


def test_policy_normalisation_gives_one_hash_per_policy() -> None:
    a = PolicySnapshot(tools_allow=["b", "a", "a"], max_cost_usd="10.50")
    b = PolicySnapshot(tools_allow=("a", "b"), max_cost_usd=decimal.Decimal("10.5"))
    assert a == b
    assert a.policy_hash == b.policy_hash
    assert a.tools_allow == ("a", "b")
    assert a.max_cost_usd == "10.5"
    assert PolicySnapshot(max_cost_usd=100).max_cost_usd == "100"
    assert PolicySnapshot().policy_hash != a.policy_hash


@pytest.mark.parametrize("cost", [12.5, "1e3", "-1", "NaN", " 1", True])
def test_policy_cost_must_be_a_decimal_string(cost: Any) -> None:
    with pytest.raises(ValidationError):
        PolicySnapshot(max_cost_usd=cost)


@pytest.mark.parametrize(
    "fields", [{"max_steps": -1}, {"max_tokens": 1.0}, {"budget": 3}, {"tools_allow": "x"}]
)
def test_policy_fields_are_validated(fields: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        PolicySnapshot(**fields)


def test_policy_rules() -> None:
    policy = PolicySnapshot(
        tools_allow=["refund", "lookup"], tools_deny=["refund"], redact_fields=["card_*"]
    )
    assert policy.allows_tool("lookup")
    assert not policy.allows_tool("refund")  # the deny-list wins
    assert not policy.allows_tool("delete")
    assert PolicySnapshot().allows_tool("anything")
    assert not PolicySnapshot(tools_allow=[]).allows_tool("lookup")
    assert PolicySnapshot(models_allow=["m1"]).allows_model("m1")
    assert not PolicySnapshot(models_allow=["m1"]).allows_model("m2")
    assert policy.redacts("card_number")
    assert not policy.redacts("amount")


def test_policy_round_trips_through_its_stored_body() -> None:
    body = KAT_POLICY.canonical_bytes()
    again = PolicySnapshot.model_validate_json(body)
    assert again == KAT_POLICY
    assert again.policy_hash == KAT_POLICY_HASH
