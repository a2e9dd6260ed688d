"""Audits of the ledger: a whole stored log (`verify_ledger`) or one entry's proof bundle
(`verify_proof_bundle`).

`verify_ledger` trusts nothing it reads. From seq 0 it checks, stopping at the first problem:

- seqs are gapless from 0 (a deleted row shows as a missing seq);
- each envelope's `prev_hash` is the previous `entry_hash` (the genesis one is 64 zeros), its
  fields have their documented forms, and its `entry_hash` is recomputed from the contents;
- `recorded_at` never goes back along the log (the ledger's writer guarantees it);
- each envelope's policy is stored and hashes to its key;
- every `kernel.capability.TOMBSTONE` in a payload comes after an `erase` envelope covering that
  execution (see `governance.envelope`);
- each checkpoint, in index order with no index missing: its signed note verifies (with the keys
  given, else with the keys the ledger stored) and names the log's origin, its stored size and
  root match the note, it is larger than the previous one (a smaller one is an old checkpoint
  replayed; an equal size with another root is a fork), its root is the Merkle root recomputed
  over the stored envelopes at its size, and a consistency proof from the previous checkpoint
  verifies;
- no checkpoint covers more envelopes than are stored (a truncated tail).

Keys stored in the ledger only show that the file agrees with itself: whoever can rewrite the
file can replace them. An auditor passes the verifier keys it trusts (obtained out of band).
Envelopes after the last checkpoint are chained but not signed: anyone with write access to the
file can append forged ones or cut them off, and deleting the last checkpoints themselves leaves
a shorter log that verifies. Witnesses (copies of the latest checkpoint held elsewhere) close
that gap.

A proof bundle (`build_proof_bundle`) carries one envelope, its leaf index, a signed checkpoint
and an inclusion proof against it: `verify_proof_bundle` needs nothing else than the bundle and
the verifier keys.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import astuple, dataclass
from json.encoder import encode_basestring
from typing import Any, Literal

import orjson
from pydantic import ValidationError

from governance.checkpoint import Verifier, open_checkpoint
from governance.envelope import (
    DOMAIN,
    GENESIS_HASH,
    EnvelopeDraft,
    EnvelopeKind,
    GovernanceEnvelope,
    erased_executions,
    stored_entry_hash,
)
from governance.errors import BundleError, CheckpointError, LedgerError, ProofError
from governance.merkle import MerkleTree, leaf_hash, verify_consistency, verify_inclusion
from governance.policy import PolicySnapshot
from governance.storage.connect import ledger_store
from governance.storage.database import Row
from governance.storage.database_url import DatabaseUrl
from governance.storage.ledger_port import CheckpointRecord, EnvelopeRow, LedgerStore
from governance.storage.sql_ledger import SqlLedgerStore
from kernel.canonical import MAX_SAFE_INTEGER, plain_bytes
from kernel.capability import TOMBSTONE

BUNDLE_FORMAT = "ledgerflow.proof-bundle.v1"
_GENESIS = bytes.fromhex(GENESIS_HASH)
_TOMBSTONE_MARK = TOMBSTONE.encode()
_ERASE = EnvelopeKind.ERASE.value
_HEX64 = re.compile(r"[0-9a-f]{64}")
_sha256 = hashlib.sha256
_NEVER = 1 << 64  # a tree size no log reaches
# The JSON text of each kind the scan's fast path takes: erase envelopes change the audit's
# state, so they (rare) always go through `_Audit.entry`.
_KIND_JSON = {kind.value: encode_basestring(kind.value) for kind in EnvelopeKind if kind != _ERASE}


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """What `verify_ledger` found.

    `first_bad_seq` is the first envelope seq found wrong or missing (for a checkpoint whose root
    disagrees with the envelopes: the first seq it covers past the previous good checkpoint);
    `bad_checkpoint` the index of the checkpoint at fault, when one is. Both are None when `ok`.
    `keys` says whether checkpoints were checked with keys the caller gave or with those the file
    stores (which prove only that the file agrees with itself).
    """

    ok: bool
    entries_checked: int
    checkpoints_checked: int
    first_bad_seq: int | None = None
    bad_checkpoint: int | None = None
    reason: str | None = None
    keys: Literal["given", "stored"] = "given"


class _Problem(Exception):
    """One finding; the audit stops at the first."""

    def __init__(
        self, reason: str, *, seq: int | None = None, checkpoint: int | None = None
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.seq = seq
        self.checkpoint = checkpoint


class _Audit:
    """The state of one pass over a log: the chain so far, the tree and the checkpoints seen."""

    def __init__(
        self,
        verifiers: list[Verifier],
        origin: str | None,
        policies: set[str],
        checkpoints: list[CheckpointRecord],
    ) -> None:
        self.verifiers = verifiers
        self.origin = origin
        self.policies = policies
        self.checkpoints = checkpoints
        self.tree = MerkleTree()
        self.prev: bytes = _GENESIS
        self.recorded_at = 0
        self.erased: set[str] = set()
        self.next_checkpoint = 0
        self.last_good: CheckpointRecord | None = None

    def _due(self) -> int:
        """The tree size at which the next checkpoint is checked (past any size when none is
        left)."""
        if self.next_checkpoint < len(self.checkpoints):
            return self.checkpoints[self.next_checkpoint].tree_size
        return _NEVER

    async def scan(self, pages: AsyncIterator[Sequence[Row]]) -> None:
        """`entry` of every stored row (`pages` of column values in `EnvelopeRow` order), with
        a fast path for the rows `entry` would accept as they are.

        The fast path takes a row only when every field has exactly the type and form
        `stored_entry_hash` checks, the row is next in the chain, is not an erase envelope,
        holds no tombstone, the SHA-256 of its body (assembled around the payload text as
        stored: the bytes `hash_body` gives) is the stored entry hash, and that text is
        canonical (`_canonical`). Every other row, good or bad, goes through `entry`, so every
        finding and its message are `entry`'s. The chain's state lives in locals here, written
        back before `entry` or a checkpoint runs.
        """
        tree = self.tree
        leaves = bytearray()  # leaf hashes of the rows taken here, not in the tree yet
        policies = {key for key in self.policies if type(key) is str and _HEX64.fullmatch(key)}
        kinds, text, hex64, tombstone = _KIND_JSON, encode_basestring, _HEX64.fullmatch, TOMBSTONE
        sha256, domain, canonical = _sha256, DOMAIN, _canonical
        size, prev, recorded = self.tree.size, self.prev, self.recorded_at
        prev_hex = prev.hex()
        due = self._due()
        async for page in pages:
            for values in page:
                (
                    seq,
                    execution,
                    step,
                    kind_value,
                    status,
                    policy,
                    snapshot,
                    payload,
                    at,
                    prev_hash,
                    entry_hash,
                ) = values
                kind = kinds.get(kind_value) if type(kind_value) is str else None
                digest = None
                if (
                    kind is not None
                    and type(seq) is int
                    and seq == size
                    and prev_hash == prev
                    and type(at) is int
                    and recorded <= at <= MAX_SAFE_INTEGER
                    and type(execution) is str
                    and execution
                    and (step is None or type(step) is str)
                    and (status is None or type(status) is str)
                    and type(policy) is str
                    and policy in policies
                    and (snapshot is None or (type(snapshot) is str and hex64(snapshot)))
                    and type(payload) is str
                    and tombstone not in payload
                ):
                    # Hex needs no escaping, and UTF-8 of the whole text is the join of the
                    # parts' (a lone surrogate fails either way).
                    snapshot_json = "null" if snapshot is None else f'"{snapshot}"'
                    status_json = "null" if status is None else text(status)
                    step_json = "null" if step is None else text(step)
                    try:
                        body = (
                            f'{{"canonical_snapshot_hash":{snapshot_json},'
                            f'"execution_id":{text(execution)},"kind":{kind},'
                            f'"payload":{payload},"policy_hash":"{policy}",'
                            f'"prev_hash":"{prev_hex}","recorded_at":{at},"seq":{seq},'
                            f'"status":{status_json},"step_id":{step_json}}}'
                        ).encode()
                    except UnicodeEncodeError:
                        pass
                    else:
                        digest = sha256(domain + prev + body).digest()
                        if digest != entry_hash or not canonical(payload):
                            digest = None
                if digest is not None:
                    leaves += sha256(b"\x00" + digest).digest()
                    size += 1
                    prev, prev_hex, recorded = digest, digest.hex(), at
                    if size < due:
                        continue
                    tree.extend_leaf_hashes(leaves)
                    leaves.clear()
                    self.prev, self.recorded_at = prev, recorded
                    self.checkpoints_due()
                else:
                    tree.extend_leaf_hashes(leaves)
                    leaves.clear()
                    self.prev, self.recorded_at = prev, recorded
                    self.entry(EnvelopeRow(*values))
                    size, prev, recorded = tree.size, self.prev, self.recorded_at
                    prev_hex = prev.hex()
                due = self._due()
        tree.extend_leaf_hashes(leaves)
        self.prev, self.recorded_at = prev, recorded

    def entry(self, row: EnvelopeRow) -> None:
        seq = self.tree.size
        if row.seq != seq:
            raise _Problem(
                f"seq {seq} is missing: the next stored envelope is seq {row.seq}", seq=seq
            )
        if row.prev_hash != self.prev:
            what = "the genesis hash" if seq == 0 else f"the entry_hash of seq {seq - 1}"
            raise _Problem(f"seq {seq}: prev_hash is not {what}", seq=seq)
        payload_bytes, erased = self._payload_as_sealed(row, seq)
        if row.recorded_at < self.recorded_at:
            raise _Problem(f"seq {seq}: recorded_at goes back in time", seq=seq)
        if row.policy_hash not in self.policies:
            raise _Problem(
                f"seq {seq}: policy {row.policy_hash} is not stored (or does not hash to its key)",
                seq=seq,
            )
        self.erased |= erased
        if _TOMBSTONE_MARK in payload_bytes and row.execution_id not in self.erased:
            raise _Problem(
                f"seq {seq}: payload holds a tombstone but no earlier erase envelope covers "
                f"execution {row.execution_id!r}",
                seq=seq,
            )
        self.prev = row.entry_hash
        self.recorded_at = row.recorded_at
        self.tree.append(row.entry_hash)
        self.checkpoints_due()

    def checkpoints_due(self) -> None:
        """Check every checkpoint the tree has grown to."""
        while (
            self.next_checkpoint < len(self.checkpoints)
            and self.checkpoints[self.next_checkpoint].tree_size <= self.tree.size
        ):
            self.checkpoint(self.next_checkpoint, self.checkpoints[self.next_checkpoint])
            self.next_checkpoint += 1

    def _payload_as_sealed(self, row: EnvelopeRow, seq: int) -> tuple[bytes, frozenset[str]]:
        """The canonical payload bytes `row`'s entry hash covers, once that hash is checked, and
        the executions the row records an erasure for.

        Fast path, nearly every envelope: the hash computed over the payload bytes as stored
        matches and those bytes are canonical (the writer stores the canonical bytes it hashed),
        so the payload is not re-encoded. Otherwise the payload is parsed and canonicalised as
        when it was sealed: a payload stored in another spelling of the same JSON still
        verifies, anything else is a finding, whatever bytes the stored hash covers. Fields of
        the wrong form, an erase payload's among them, are a finding on either path.
        """
        stored = row.payload.encode() if isinstance(row.payload, str) else b""
        try:
            entry_hash = stored_entry_hash(
                row.seq,
                row.execution_id,
                row.step_id,
                row.kind,
                row.status,
                row.policy_hash,
                row.canonical_snapshot_hash,
                stored,
                row.recorded_at,
                row.prev_hash.hex(),
            )
            if entry_hash == row.entry_hash.hex() and _canonical(row.payload):
                if row.kind != _ERASE:
                    return stored, frozenset()
                payload = json.loads(row.payload)
                return stored, erased_executions(row.execution_id, row.kind, payload)
            draft = EnvelopeDraft.build(
                execution_id=row.execution_id,
                kind=row.kind,
                policy_hash=row.policy_hash,
                step_id=row.step_id,
                status=row.status,
                payload=json.loads(row.payload),
                canonical_snapshot_hash=row.canonical_snapshot_hash,
            )
            sealed = draft.seal(row.seq, row.prev_hash.hex(), row.recorded_at)
        except (ValueError, TypeError) as exc:  # malformed field, payload not JSON
            raise _Problem(f"seq {seq}: malformed envelope: {exc}", seq=seq) from exc
        if sealed.entry_hash != row.entry_hash.hex():
            raise _Problem(f"seq {seq}: entry_hash does not match the envelope's contents", seq=seq)
        return draft.payload_bytes, erased_executions(row.execution_id, draft.kind, draft.payload)

    def checkpoint(self, index: int, record: CheckpointRecord) -> None:
        if record.index != index:
            raise _Problem(
                f"checkpoint {index} is missing: the next stored one is {record.index}",
                checkpoint=index,
            )
        try:
            body = open_checkpoint(record.note, self.verifiers, origin=self.origin).checkpoint
        except CheckpointError as exc:
            raise _Problem(f"checkpoint {index}: {exc}", checkpoint=index) from exc
        if (body.size, body.root) != (record.tree_size, record.root):
            raise _Problem(
                f"checkpoint {index}: stored size {record.tree_size} or root differ from its "
                f"signed note (size {body.size})",
                checkpoint=index,
            )
        last = self.last_good
        if last is not None and body.size <= last.tree_size:
            if body.size < last.tree_size:
                reason = (
                    f"checkpoint {index} has size {body.size}, smaller than checkpoint "
                    f"{last.index}'s {last.tree_size}: an older checkpoint replayed as newer"
                )
            elif body.root != last.root:
                reason = (
                    f"fork: checkpoints {last.index} and {index} both have size {body.size} "
                    "but different roots"
                )
            else:
                reason = f"checkpoint {index} repeats checkpoint {last.index} (size {body.size})"
            raise _Problem(reason, checkpoint=index)
        start = 0 if last is None else last.tree_size
        if self.tree.root(body.size) != body.root:
            raise _Problem(
                f"checkpoint {index}: the envelopes in seq {start}..{body.size - 1} do not give "
                "its root (rewritten since it was signed)",
                seq=start,
                checkpoint=index,
            )
        if last is not None:
            proof = self.tree.consistency_proof(last.tree_size, body.size)
            try:
                verify_consistency(last.tree_size, body.size, proof, last.root, body.root)
            except ProofError as exc:
                raise _Problem(
                    f"checkpoint {index} is not consistent with checkpoint {last.index}: {exc}",
                    checkpoint=index,
                ) from exc
        self.last_good = record

    def finish(self) -> None:
        if self.next_checkpoint < len(self.checkpoints):
            record = self.checkpoints[self.next_checkpoint]
            raise _Problem(
                f"checkpoint {record.index} covers {record.tree_size} envelopes but only "
                f"{self.tree.size} are stored: the log was truncated",
                seq=self.tree.size,
                checkpoint=self.next_checkpoint,
            )


def _canonical(payload: str) -> bool:
    """Whether `payload` is exactly the canonical text `canonical_payload` gives for the JSON
    it holds, so a hash over the text as stored is the hash over the canonical bytes.

    Decided with the canonical encoder's own fast path: a payload in its domain (the usual
    case) is canonical when `plain_bytes` of its parse gives it back, since any JSON parser
    reads that encoder's output back to the same value. Anything else (outside the domain,
    not JSON, not the same bytes) is False, and the caller parses and re-canonicalises.
    """
    try:
        return plain_bytes(orjson.loads(payload)) == payload.encode()
    except (ValueError, RecursionError):  # not JSON, a lone surrogate, too deep
        return False


async def _pages(store: LedgerStore) -> AsyncIterator[Sequence[Row]]:
    """Every stored envelope in seq order, as pages of column values in `EnvelopeRow` order.

    A SQL store's rows are read with its own pager (`scan` reads them so too), skipping the
    `EnvelopeRow` that `scan` builds per row: a fifth of the audit's time, and the fast path
    needs only the values. Any other store is read through `scan`.
    """
    if isinstance(store, SqlLedgerStore):
        async for page in store.scan_pages():
            yield page
        return
    async for row in store.scan():
        yield [astuple(row)]


def _valid_policies(stored: list[tuple[str, str]]) -> set[str]:
    """Hashes of the stored policies whose body parses and hashes to the key."""
    valid: set[str] = set()
    for policy_hash, body in stored:
        try:
            if PolicySnapshot.model_validate_json(body).policy_hash == policy_hash:
                valid.add(policy_hash)
        except ValidationError:
            continue
    return valid


def _verifiers(texts: Sequence[str], source: str) -> list[Verifier]:
    verifiers: list[Verifier] = []
    for text in texts:
        try:
            verifiers.append(Verifier.from_text(text))
        except CheckpointError as exc:
            raise LedgerError(f"{source} verifier key {text!r} is invalid: {exc}") from exc
    return verifiers


async def _audit(
    store: LedgerStore, verifier_keys: Sequence[str] | None, origin: str | None
) -> VerifyReport:
    keys: Literal["given", "stored"] = "given" if verifier_keys is not None else "stored"
    texts = list(verifier_keys) if verifier_keys is not None else await store.list_keys()
    audit = _Audit(
        _verifiers(texts, keys),
        origin if origin is not None else await store.get_origin(),
        _valid_policies(await store.list_policies()),
        # Read before the envelopes: every envelope a checkpoint covers is already stored.
        await store.list_checkpoints(),
    )
    try:
        await audit.scan(_pages(store))
        audit.finish()
    except _Problem as problem:
        return VerifyReport(
            ok=False,
            entries_checked=audit.tree.size,
            checkpoints_checked=audit.next_checkpoint,
            first_bad_seq=problem.seq,
            bad_checkpoint=problem.checkpoint,
            reason=problem.reason,
            keys=keys,
        )
    return VerifyReport(
        ok=True,
        entries_checked=audit.tree.size,
        checkpoints_checked=audit.next_checkpoint,
        keys=keys,
    )


async def verify_ledger(
    store: LedgerStore,
    verifier_keys: Sequence[str] | None = None,
    *,
    origin: str | None = None,
) -> VerifyReport:
    """Audit a whole ledger in an open `store`.

    `verifier_keys` are verifier key texts (`<name>+<id>+<base64>`); None uses the keys stored in
    the ledger (internal consistency only, see the module docstring). `origin`, when given, is the
    origin every checkpoint must name; otherwise the stored origin is used. Returns a report;
    raises only for an unusable input (a malformed key, a store that is not a ledger).
    """
    return await _audit(store, verifier_keys, origin)


async def verify_ledger_at(
    where: str | os.PathLike[str] | DatabaseUrl,
    verifier_keys: Sequence[str] | None = None,
    *,
    origin: str | None = None,
) -> VerifyReport:
    """`verify_ledger` of the ledger at `where` (a SQLite path or a database URL), opened
    read-only for the audit and closed after it."""
    store = ledger_store(where, readonly=True)
    await store.open()
    try:
        return await verify_ledger(store, verifier_keys, origin=origin)
    finally:
        await store.close()


# -- proof bundles -------------------------------------------------------------------------


def build_proof_bundle(
    envelope: GovernanceEnvelope, origin: str, note: bytes, tree_size: int, proof: list[bytes]
) -> dict[str, Any]:
    """The JSON-able proof that `envelope` is entry `envelope.seq` of the log signed by `note`."""
    return {
        "format": BUNDLE_FORMAT,
        "origin": origin,
        "envelope": envelope.model_dump(mode="json"),
        "leaf_index": envelope.seq,
        "tree_size": tree_size,
        "inclusion_proof": [base64.b64encode(node).decode() for node in proof],
        "checkpoint": note.decode(),
    }


def _field(bundle: Mapping[str, Any], name: str, kind: type) -> Any:
    value = bundle.get(name)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise BundleError(f"proof bundle field {name!r} must be a {kind.__name__}, got {value!r}")
    return value


def _proof_hashes(encoded: list[Any]) -> list[bytes]:
    hashes: list[bytes] = []
    for position, text in enumerate(encoded):
        try:
            if not isinstance(text, str):
                raise ValueError("not a string")
            hashes.append(base64.b64decode(text, validate=True))
        except (binascii.Error, ValueError) as exc:
            raise BundleError(f"inclusion_proof[{position}] is not base64: {text!r}") from exc
    return hashes


def verify_proof_bundle(
    bundle: Mapping[str, Any], verifier_keys: Sequence[str], *, origin: str | None = None
) -> None:
    """Check a proof bundle with nothing but itself and the verifier keys the caller trusts.

    Checks: the envelope's fields and its entry hash; that it sits at `leaf_index`; that the
    checkpoint note is signed by one of `verifier_keys` (every known signature must verify), is
    for the bundle's origin (and `origin`, when given) and has the bundle's tree size; and that
    the inclusion proof leads from the envelope's leaf to the signed root. Raises `BundleError`,
    `CheckpointError` or `ProofError` (all `LedgerError`) on the first failure.
    """
    if not isinstance(bundle, Mapping):
        raise BundleError(f"a proof bundle is a JSON object, got {type(bundle).__name__}")
    if bundle.get("format") != BUNDLE_FORMAT:
        raise BundleError(
            f"proof bundle format must be {BUNDLE_FORMAT!r}: {bundle.get('format')!r}"
        )
    log = _field(bundle, "origin", str)
    if origin is not None and log != origin:
        raise BundleError(f"proof bundle is for origin {log!r}, expected {origin!r}")
    try:
        envelope = GovernanceEnvelope.model_validate(_field(bundle, "envelope", dict))
    except ValidationError as exc:
        raise BundleError(f"proof bundle envelope is malformed: {exc}") from exc
    if not envelope.hash_ok():
        raise BundleError(f"envelope seq {envelope.seq} does not hash to its entry_hash")
    index = _field(bundle, "leaf_index", int)
    if index != envelope.seq:
        raise BundleError(f"leaf_index {index} is not the envelope's seq {envelope.seq}")
    size = _field(bundle, "tree_size", int)
    proof = _proof_hashes(_field(bundle, "inclusion_proof", list))
    verifiers = _verifiers(verifier_keys, "given")
    if not verifiers:
        raise BundleError("verify_proof_bundle needs at least one trusted verifier key")
    note = _field(bundle, "checkpoint", str).encode()
    signed = open_checkpoint(note, verifiers, origin=log).checkpoint
    if signed.size != size:
        raise BundleError(f"tree_size {size} is not the signed checkpoint's size {signed.size}")
    entry = leaf_hash(bytes.fromhex(envelope.entry_hash))
    verify_inclusion(entry, index, size, proof, signed.root)
