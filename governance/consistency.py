"""Checks against a checkpoint an auditor already holds: has the log only grown since?

An auditor keeps a signed checkpoint note (`ledgerflow checkpoint --out cp.note`). Later the
ledger hands out a consistency bundle (`Ledger.consistency_bundle(old_size)`): its current
signed checkpoint and a Merkle consistency proof from the old size to it. `check_consistency`
needs nothing else but the verifier keys the auditor trusts, and tells apart:

- consistent: the old tree is a prefix of the new one;
- rollback: the log is now smaller than the old checkpoint (a restored backup, say);
- fork: the log holds as many entries or more, but not the same history (a ledger rewritten,
  or rebuilt with the same key), shown by a proof that does not lead to both roots.

Both signatures are checked first: a bundle whose checkpoint is not signed by a trusted key
proves nothing either way.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from governance.checkpoint import Checkpoint, Verifier, note_text, open_checkpoint
from governance.errors import BundleError, CheckpointError, RootMismatchError
from governance.merkle import verify_consistency

CONSISTENCY_FORMAT = "ledgerflow-consistency-v1"
Verdict = Literal["consistent", "rollback", "fork"]


def build_consistency_bundle(
    origin: str, old_size: int, note: bytes, new_size: int, proof: list[bytes] | None
) -> dict[str, Any]:
    """The JSON-able answer to "prove the log of `note` extends the one of size `old_size`";
    `proof` is None when the log is smaller than `old_size` (nothing can be proved)."""
    return {
        "format": CONSISTENCY_FORMAT,
        "origin": origin,
        "old_size": old_size,
        "new_size": new_size,
        "consistency_proof": _encoded(proof),
        "checkpoint": note.decode(),
    }


def consistency_part(old_size: int, proof: list[bytes] | None) -> dict[str, Any]:
    """The `consistency` field of a proof bundle asked for `since` a checkpoint of old_size."""
    return {"old_size": old_size, "proof": _encoded(proof)}


def _encoded(proof: list[bytes] | None) -> list[str] | None:
    return None if proof is None else [base64.b64encode(node).decode() for node in proof]


def proof_bundle_consistency(
    bundle: Mapping[str, Any], old_note: bytes, verifier_keys: Sequence[str]
) -> ConsistencyReport:
    """Whether the checkpoint of a proof bundle (`Ledger.proof_bundle(seq, since_size)`)
    extends the checkpoint note the auditor holds."""
    part = bundle.get("consistency")
    if not isinstance(part, Mapping):
        raise BundleError(
            "the proof bundle carries no consistency proof: ask for one since your checkpoint "
            "(`ledgerflow proof --since NOTE`, or get_proof with since_size)"
        )
    return check_consistency(
        old_note,
        {
            "format": CONSISTENCY_FORMAT,
            "old_size": part.get("old_size"),
            "new_size": bundle.get("tree_size"),
            "consistency_proof": part.get("proof"),
            "checkpoint": bundle.get("checkpoint"),
        },
        verifier_keys,
    )


def note_size(note: bytes) -> int:
    """The tree size a checkpoint note states, read without checking its signature (to ask a
    ledger for a proof; the check comes later, with the keys)."""
    return Checkpoint.parse_body(note_text(note)).size


@dataclass(frozen=True, slots=True)
class ConsistencyReport:
    verdict: Verdict
    old: Checkpoint
    new: Checkpoint

    @property
    def ok(self) -> bool:
        return self.verdict == "consistent"

    def describe(self) -> str:
        old = f"size {self.old.size}, root {self.old.root.hex()}"
        new = f"size {self.new.size}, root {self.new.root.hex()}"
        if self.verdict == "consistent":
            return f"consistent: the log grew from {old} to {new} and kept its history"
        if self.verdict == "rollback":
            return f"ROLLBACK: the log is now {new}, smaller than your checkpoint's {old}"
        return f"FORK: the log at {new} does not extend your checkpoint's {old}"


def check_consistency(
    old_note: bytes, bundle: Mapping[str, Any], verifier_keys: Sequence[str]
) -> ConsistencyReport:
    """Check `bundle` against the checkpoint note the auditor holds, offline.

    Raises CheckpointError when either note is not signed by a trusted key or they are for
    different logs, BundleError for a malformed bundle; a rollback or fork is a report."""
    verifiers = [Verifier.from_text(key) for key in verifier_keys]
    if not verifiers:
        raise BundleError("check_consistency needs at least one trusted verifier key")
    old = open_checkpoint(old_note, verifiers).checkpoint
    if not isinstance(bundle, Mapping) or bundle.get("format") != CONSISTENCY_FORMAT:
        raise BundleError(f"a consistency bundle is a JSON object of format {CONSISTENCY_FORMAT!r}")
    note = bundle.get("checkpoint")
    if not isinstance(note, str):
        raise BundleError("consistency bundle field 'checkpoint' must be the signed note text")
    new = open_checkpoint(note.encode(), verifiers).checkpoint
    if new.origin != old.origin:
        raise CheckpointError(
            f"the checkpoints are of different logs: {old.origin!r} and {new.origin!r}"
        )
    if bundle.get("old_size") != old.size or bundle.get("new_size") != new.size:
        raise BundleError(
            f"the bundle proves sizes {bundle.get('old_size')} -> {bundle.get('new_size')}, "
            f"not {old.size} -> {new.size}"
        )
    if new.size < old.size:
        return ConsistencyReport("rollback", old, new)
    try:
        verify_consistency(
            old.size, new.size, _hashes(bundle.get("consistency_proof")), old.root, new.root
        )
    except RootMismatchError:
        return ConsistencyReport("fork", old, new)
    return ConsistencyReport("consistent", old, new)


def _hashes(encoded: Any) -> list[bytes]:
    if not isinstance(encoded, list):
        raise BundleError("consistency bundle field 'consistency_proof' must be a list")
    try:
        return [base64.b64decode(text, validate=True) for text in encoded]
    except (binascii.Error, TypeError, ValueError) as exc:
        raise BundleError(f"consistency_proof holds a hash that is not base64: {exc}") from exc
