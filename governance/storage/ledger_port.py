"""The LedgerStore port: where the audit ledger keeps envelopes, policies, keys and checkpoints.

The `Ledger` computes everything that chains (seq, prev_hash, entry_hash, Merkle roots) in its
single writer; a store persists it and *enforces* it: an implementation must refuse, inside the
transaction, any envelope whose seq is not the next one or whose prev_hash is not the entry hash
of the last stored envelope, and any checkpoint that does not grow the tree or covers envelopes
it does not hold. Envelopes, checkpoints, policies and keys are never updated nor deleted.

`SqliteLedgerStore` implements it with triggers, `PostgresLedgerStore` with triggers and one
advisory lock that serialises the head across instances. Operational data that is not part of
the chain (runs, cursors, leases, idempotency keys: `governance.runs`) lives in other tables of
the same database; such tables may be updated and deleted from, and never feed a hash.

Times are integer microseconds since the Unix epoch; hashes of the chain are raw 32 bytes here
and lowercase hex in envelopes.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

from governance.envelope import EnvelopeKind, GovernanceEnvelope
from governance.policy import PolicySnapshot

Synchronous = Literal["FULL", "NORMAL"]
# A statement on the operational tables of the ledger's own database, with `?` placeholders.
Statement = tuple[str, Sequence[Any]]


@dataclass(frozen=True, slots=True)
class EnvelopeRow:
    """An envelope exactly as stored, unvalidated: what an auditor re-checks.

    `payload` is the stored JSON text; `prev_hash` and `entry_hash` are the stored bytes.
    """

    seq: int
    execution_id: str
    step_id: str | None
    kind: str
    status: str | None
    policy_hash: str
    canonical_snapshot_hash: str | None
    payload: str
    recorded_at: int
    prev_hash: bytes
    entry_hash: bytes


def envelope_of(row: EnvelopeRow) -> GovernanceEnvelope:
    """Validate a stored row into an envelope (pydantic raises on a malformed row)."""
    return GovernanceEnvelope.model_validate(
        {
            "seq": row.seq,
            "execution_id": row.execution_id,
            "step_id": row.step_id,
            "kind": row.kind,
            "status": row.status,
            "policy_hash": row.policy_hash,
            "canonical_snapshot_hash": row.canonical_snapshot_hash,
            "payload": json.loads(row.payload),
            "recorded_at": row.recorded_at,
            "prev_hash": bytes(row.prev_hash).hex(),
            "entry_hash": bytes(row.entry_hash).hex(),
        }
    )


def row_values(envelope: GovernanceEnvelope) -> tuple[Any, ...]:
    """The envelope as the column values of its stored row, in `EnvelopeRow` order."""
    return (
        envelope.seq,
        envelope.execution_id,
        envelope.step_id,
        envelope.kind.value,
        envelope.status,
        envelope.policy_hash,
        envelope.canonical_snapshot_hash,
        envelope.payload_bytes().decode(),
        envelope.recorded_at,
        bytes.fromhex(envelope.prev_hash),
        bytes.fromhex(envelope.entry_hash),
    )


@dataclass(frozen=True, slots=True)
class CheckpointRecord:
    """A signed checkpoint as stored: its position, the tree it covers and the signed note.

    `index` counts checkpoints gaplessly from 0. `tree_size` and `root` repeat what the note's
    body says (for queries); the signed `note` is authoritative and verification compares them.
    """

    index: int
    tree_size: int
    root: bytes
    note: bytes
    created_at: int


@dataclass(frozen=True, slots=True)
class EnvelopeQuery:
    """Filters of a query, all optional and combined with AND; results are in seq order.

    `since` is inclusive and `until` exclusive (microseconds); `start_seq` is inclusive and lets a
    reader page by position instead of by offset.
    """

    execution_id: str | None = None
    kind: EnvelopeKind | None = None
    policy_hash: str | None = None
    since: int | None = None
    until: int | None = None
    start_seq: int | None = None
    limit: int | None = None
    offset: int = 0

    def conditions(self) -> list[tuple[str, str, Any]]:
        """(column, operator, value) of every filter given, for a store's WHERE clause."""
        filters = (
            ("execution_id", "=", self.execution_id),
            ("kind", "=", None if self.kind is None else str(self.kind)),
            ("policy_hash", "=", self.policy_hash),
            ("recorded_at", ">=", self.since),
            ("recorded_at", "<", self.until),
            ("seq", ">=", self.start_seq),
        )
        return [
            (column, operator, value) for column, operator, value in filters if value is not None
        ]


@runtime_checkable
class LedgerStore(Protocol):
    """Persistent storage of one audit log. Methods are coroutines; iterators stream rows."""

    async def open(self) -> None:
        """Connect, and create or migrate the schema (a read-only store only checks it)."""
        ...

    async def close(self) -> None: ...

    async def append_batch(self, envelopes: Sequence[GovernanceEnvelope]) -> None:
        """Store `envelopes` (consecutive seqs) in ONE transaction, all or none.

        Returns only after the commit is durable at the store's synchronous level; raises
        `ChainError` when the store refuses them (seq or prev_hash out of line).
        """
        ...

    async def append_after(
        self,
        known_size: int,
        seal: Callable[[list[GovernanceEnvelope]], Sequence[GovernanceEnvelope]],
        also: Sequence[Statement] = (),
    ) -> tuple[list[GovernanceEnvelope], list[GovernanceEnvelope]]:
        """Append in ONE write transaction that also reads what other writers appended.

        Under the store's write lock: read the envelopes with seq >= `known_size` (appended by
        other processes since this writer last looked), call `seal(newcomers)` to seal this
        writer's batch after the true head, store it, commit. Returns (newcomers, sealed).
        This is what lets several processes share one log: the database serialises them.

        `seal` may be called more than once, each time with every envelope found after
        `known_size` so far (a store may first seal optimistically, with none, and seal again
        when another writer did append); what its last call returned is what is stored, so it
        must be safe to call again (the ledger takes each newcomer in once).

        `also` are statements on operational tables of the same database (a run's index row),
        run after the inserts in the same transaction: committed with the envelopes or not at
        all.
        """
        ...

    async def head(self) -> GovernanceEnvelope | None:
        """The envelope with the highest seq, or None when the log is empty."""
        ...

    async def read_range(self, start: int, stop: int) -> list[GovernanceEnvelope]:
        """Envelopes with start <= seq < stop, in seq order."""
        ...

    def scan(self, start: int = 0, stop: int | None = None) -> AsyncIterator[EnvelopeRow]:
        """Stored rows with start <= seq (< stop), in seq order, without validation."""
        ...

    def entry_hashes(self, start: int = 0, stop: int | None = None) -> AsyncIterator[bytes]:
        """Stored entry hashes (32 bytes each) in seq order: the Merkle tree's leaf data."""
        ...

    async def query(self, query: EnvelopeQuery) -> list[GovernanceEnvelope]: ...

    async def put_policy(self, policy: PolicySnapshot) -> str:
        """Store `policy` once (idempotent) and return its hash."""
        ...

    async def get_policy(self, policy_hash: str) -> PolicySnapshot | None: ...

    async def list_policies(self) -> list[tuple[str, str]]:
        """Every stored (policy_hash, canonical JSON body), unvalidated: for auditors."""
        ...

    async def save_checkpoint(self, record: CheckpointRecord) -> None:
        """Append a checkpoint; `ChainError` if it does not grow the tree or covers missing
        envelopes, or if its index is not the next one."""
        ...

    async def list_checkpoints(self) -> list[CheckpointRecord]:
        """Every checkpoint, by index."""
        ...

    async def last_checkpoint(self) -> CheckpointRecord | None: ...

    async def add_keys(self, verifier_keys: Sequence[str]) -> None:
        """Remember verifier key texts (idempotent): the keys the log's checkpoints use."""
        ...

    async def list_keys(self) -> list[str]: ...

    async def get_origin(self) -> str | None:
        """The log's origin line, once set."""
        ...

    async def set_origin(self, origin: str) -> None:
        """Set the origin of a log that has none; `LedgerError` if it has another."""
        ...
