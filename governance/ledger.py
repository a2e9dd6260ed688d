"""The governance ledger: appends envelopes with group commit and signs Merkle checkpoints.

Guarantees:

- One writer task numbers, chains and stores every envelope, so seqs are gapless and each
  `prev_hash` is the previous `entry_hash`; the store refuses anything else. Concurrent
  `append` calls that arrive while a commit is in flight are stored together in the next
  transaction (group commit: one fsync for the whole batch), and each caller's `append` returns
  only after the COMMIT holding its envelope. If a caller is cancelled after its envelope was
  queued, the envelope is still recorded.
- `recorded_at` never decreases along the log (the wall clock is clamped to the last value).
- The Merkle tree over the entry hashes is rebuilt from the store at `open` and extended after
  each commit; `open` refuses a store whose envelopes do not match its last checkpoint.
- Checkpoints are cut every `checkpoint_every` envelopes, every `checkpoint_interval_seconds`
  (when there is something new), on `checkpoint()` and on `close()`; each is signed by the
  signer and every extra signer (key rotation: sign with old and new keys while verifiers move),
  and is saved only after a consistency proof from the previous checkpoint verifies.
- A payload may hold `kernel.capability.TOMBSTONE` only after an `erase` envelope covering its
  execution was committed (the rule `governance.verify` checks).

Use one `Ledger` per store: a second writer on the same file makes the store refuse the first
one's appends, and the ledger then stops (`LedgerClosedError`).
"""

from __future__ import annotations

import asyncio
import collections
import datetime as _dt
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO, Any

from governance.checkpoint import Checkpoint, Signer, sign_checkpoint
from governance.consistency import build_consistency_bundle, consistency_part
from governance.envelope import (
    GENESIS_HASH,
    EnvelopeDraft,
    EnvelopeKind,
    GovernanceEnvelope,
    erased_executions,
)
from governance.errors import ChainError, LedgerClosedError, LedgerError
from governance.merkle import MerkleTree, leaf_hash, verify_consistency
from governance.policy import PolicySnapshot
from governance.storage.connect import ledger_store
from governance.storage.database_url import DatabaseUrl
from governance.storage.ledger_port import (
    CheckpointRecord,
    EnvelopeQuery,
    LedgerStore,
    Statement,
    Synchronous,
)
from governance.tiles import TILE_WIDTH, entry_bundle, hash_tile, tile_width
from governance.verify import VerifyReport, build_proof_bundle, verify_ledger
from kernel.canonical import canonical_json
from kernel.clock import Clock, SystemClock

_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.UTC)
_EXPORT_PAGE = 1000
_CHECKPOINT_ATTEMPTS = 5
POLICY_EXECUTION = "policy"  # execution id of the envelopes that record a policy change


@dataclass(slots=True)
class WriterStats:
    """Group-commit counters: transactions committed and envelopes they held."""

    commits: int = 0
    envelopes: int = 0
    max_batch: int = 0

    @property
    def mean_batch(self) -> float:
        return self.envelopes / self.commits if self.commits else 0.0


@dataclass(slots=True)
class _Rider:
    draft: EnvelopeDraft
    also: Sequence[Statement] = ()


@dataclass(slots=True)
class _Pending:
    draft: EnvelopeDraft
    future: asyncio.Future[GovernanceEnvelope]
    also: Sequence[Statement] = ()
    # Envelopes appended with append_riding before this one: sealed just before it, in order,
    # in the same transaction (stored with it or not at all).
    riders: tuple[_Rider, ...] = ()


def _micros(value: int | _dt.datetime | None) -> int | None:
    """Microseconds since the epoch of an int (as is) or an aware datetime."""
    if value is None or isinstance(value, int):
        return value
    if value.tzinfo is None:
        raise ValueError(f"datetime {value.isoformat()} has no time zone: give an aware datetime")
    return (value - _EPOCH) // _dt.timedelta(microseconds=1)


class Ledger:
    """An open audit ledger. Create with `await Ledger.open_at(...)`; close with `await close()`."""

    def __init__(
        self,
        store: LedgerStore,
        signers: Sequence[Signer],
        origin: str,
        *,
        checkpoint_every: int,
        checkpoint_interval_seconds: float | None,
        clock: Clock | None,
        max_batch: int,
        checkpoint_on_close: bool,
    ) -> None:
        if checkpoint_every < 1:
            raise ValueError(f"checkpoint_every must be at least 1, got {checkpoint_every}")
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        Checkpoint(origin, 0, bytes(32))  # refuses an origin no checkpoint could carry
        self._store = store
        self._signers = tuple(signers)
        self._origin = origin
        self._checkpoint_every = checkpoint_every
        self._checkpoint_interval = checkpoint_interval_seconds
        self._clock = clock
        self._max_batch = max_batch
        self._checkpoint_on_close = checkpoint_on_close
        self._tree = MerkleTree()
        self._head_hash = GENESIS_HASH
        self._last_recorded_at = 0
        self._policy = PolicySnapshot()
        self._policy_hash = self._policy.policy_hash
        self._erased: set[str] = set()
        self._last_checkpoint: CheckpointRecord | None = None
        # The checkpoint timer reads and sleeps on the Clock port, so tests move it by hand.
        self._timer: Clock = clock if clock is not None else SystemClock()
        self._last_checkpoint_time = self._timer.now()
        self._pending: collections.deque[_Pending] = collections.deque()
        self._riders: list[_Rider] = []
        self._wakeup = asyncio.Event()
        self._lock = asyncio.Lock()  # one commit or checkpoint at a time
        self._writer: asyncio.Task[None] | None = None
        self._closing = False
        self._closed = False
        self._failure: LedgerClosedError | None = None
        self.stats = WriterStats()
        self.last_checkpoint_error: Exception | None = None

    # -- opening and closing ---------------------------------------------------------------

    @classmethod
    async def open_at(
        cls,
        where: str | os.PathLike[str] | DatabaseUrl,
        *,
        signer: Signer,
        origin: str,
        synchronous: Synchronous = "FULL",
        **options: Any,
    ) -> Ledger:
        """Open (creating if needed) the ledger at `where`: a SQLite path, sqlite:///PATH or
        postgresql://... `options` are those of `open`."""
        store = ledger_store(where, synchronous=synchronous)
        return await cls.open(store, signer=signer, origin=origin, **options)

    @classmethod
    async def open(
        cls,
        store: LedgerStore,
        *,
        signer: Signer,
        origin: str,
        policy: PolicySnapshot | None = None,
        checkpoint_every: int = 1000,
        checkpoint_interval_seconds: float | None = None,
        extra_signers: Sequence[Signer] = (),
        clock: Clock | None = None,
        max_batch: int = 1000,
        checkpoint_on_close: bool = True,
    ) -> Ledger:
        """Open the ledger over an unopened `store` (the ledger opens and closes it).

        `policy` becomes the active policy; None keeps the policy of the last envelope (or an
        empty, permissive policy for a new ledger). `clock` (kernel Clock, seconds) replaces the
        system clock for `recorded_at` and for the checkpoint timer.
        """
        ledger = cls(
            store,
            (signer, *extra_signers),
            origin,
            checkpoint_every=checkpoint_every,
            checkpoint_interval_seconds=checkpoint_interval_seconds,
            clock=clock,
            max_batch=max_batch,
            checkpoint_on_close=checkpoint_on_close,
        )
        await store.open()
        try:
            await ledger._load(policy)
        except BaseException:
            await store.close()
            raise
        ledger._writer = asyncio.create_task(ledger._write_loop(), name=f"ledger writer {origin}")
        return ledger

    async def _load(self, policy: PolicySnapshot | None) -> None:
        store = self._store
        await store.set_origin(self._origin)
        await store.add_keys([signer.verifier().to_text() for signer in self._signers])
        # The head first, then the leaves up to it: other writers may append meanwhile, and
        # what they add after the head was read must not look like a gap.
        head = await store.head()
        stored = 0 if head is None else head.seq + 1
        self._tree = MerkleTree.from_leaf_hashes(
            [leaf_hash(h) async for h in store.entry_hashes(0, stored)]
        )
        if self._tree.size != stored or (
            head is not None
            and self._tree.leaf_hash_at(head.seq) != leaf_hash(bytes.fromhex(head.entry_hash))
        ):
            raise ChainError(
                f"the store holds {self._tree.size} envelopes but its last seq is {stored - 1}: "
                "the log has gaps; run governance.verify.verify_ledger"
            )
        if head is not None:
            self._head_hash = head.entry_hash
            self._last_recorded_at = head.recorded_at
        last = await store.last_checkpoint()
        if last is not None and last.tree_size > self._tree.size:
            # Another writer appended and checkpointed since the head was read: take it in.
            self._take_in(await store.read_range(self._tree.size, last.tree_size))
        if last is not None and (
            last.tree_size > self._tree.size or self._tree.root(last.tree_size) != last.root
        ):
            raise ChainError(
                f"the stored envelopes ({self._tree.size}) do not match checkpoint {last.index} "
                f"(size {last.tree_size}): truncated or rewritten; run verify_ledger"
            )
        self._last_checkpoint = last
        if policy is None and head is not None:
            found = await store.get_policy(head.policy_hash)
            if found is None:
                raise ChainError(f"the last envelope's policy {head.policy_hash} is not stored")
            policy = found
        await self._activate(policy if policy is not None else PolicySnapshot())
        for envelope in await store.query(EnvelopeQuery(kind=EnvelopeKind.ERASE)):
            self._erased |= erased_executions(
                envelope.execution_id, envelope.kind, envelope.payload
            )

    async def _activate(self, policy: PolicySnapshot) -> None:
        self._policy_hash = await self._store.put_policy(policy)
        self._policy = policy

    async def close(self) -> None:
        """Store every envelope already queued, cut a last checkpoint, close the store."""
        if self._closed:
            return
        if self._failure is None:
            self._queue_riders()
        self._closing = True
        self._wakeup.set()
        if self._writer is not None:
            await asyncio.gather(self._writer, return_exceptions=True)
        try:
            if self._checkpoint_on_close and self._failure is None:
                async with self._lock:
                    await self._cut_checkpoint()
        finally:
            self._closed = True
            await self._store.close()

    async def __aenter__(self) -> Ledger:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- state -----------------------------------------------------------------------------

    @property
    def origin(self) -> str:
        return self._origin

    @property
    def size(self) -> int:
        """Number of committed envelopes (the next seq)."""
        return self._tree.size

    @property
    def head_hash(self) -> str:
        """Entry hash of the last committed envelope (the genesis hash when empty)."""
        return self._head_hash

    @property
    def policy(self) -> PolicySnapshot:
        return self._policy

    @property
    def policy_hash(self) -> str:
        return self._policy_hash

    @property
    def last_checkpoint(self) -> CheckpointRecord | None:
        return self._last_checkpoint

    @property
    def verifier_keys(self) -> list[str]:
        """Verifier key texts of the signers, to hand to auditors."""
        return [signer.verifier().to_text() for signer in self._signers]

    @property
    def store(self) -> LedgerStore:
        return self._store

    def root(self, size: int | None = None) -> bytes:
        """Merkle root of the first `size` committed envelopes (all by default)."""
        return self._tree.root(size)

    async def set_policy(self, policy: PolicySnapshot) -> str:
        """Store `policy` and make it the policy of envelopes appended from now on.

        A change is recorded at once as a `policy` envelope: the policy in force is the last
        envelope's, so every process that opens the ledger next (a command, another instance)
        is held to it, and auditors see when it took effect."""
        self._check_open()
        if policy.policy_hash != self._policy_hash:
            await self._activate(policy)
            await self.append(POLICY_EXECUTION, EnvelopeKind.POLICY, payload={"name": policy.name})
        return self._policy_hash

    # -- appending -------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._failure is not None:
            raise self._failure
        if self._closing:
            raise LedgerClosedError(f"ledger {self._origin!r} is closed")

    async def append(
        self,
        execution_id: str,
        kind: EnvelopeKind | str,
        step_id: str | None = None,
        status: str | None = None,
        payload: Any = None,
        snapshot_hash: str | None = None,
        also: Sequence[Statement] = (),
    ) -> GovernanceEnvelope:
        """Record one envelope under the active policy; return it once its commit is durable.
        Envelopes waiting to ride (`append_riding`) are sealed just before it, in its commit.

        `also`: statements on operational tables of the ledger's own database (a run's index
        row) committed in the same transaction as the envelope, so that both or neither are
        stored, for one commit (one fsync) instead of two.

        Raises ValueError for malformed contents (before anything is queued), LedgerError for a
        tombstone without an earlier erasure, and the store's error if its commit fails.
        """
        draft = self._draft(execution_id, kind, step_id, status, payload, snapshot_hash)
        future: asyncio.Future[GovernanceEnvelope] = asyncio.get_running_loop().create_future()
        riders, self._riders = tuple(self._riders), []
        self._pending.append(_Pending(draft, future, also, riders))
        self._wakeup.set()
        return await future

    def append_riding(
        self,
        execution_id: str,
        kind: EnvelopeKind | str,
        step_id: str | None = None,
        status: str | None = None,
        payload: Any = None,
        snapshot_hash: str | None = None,
        also: Sequence[Statement] = (),
    ) -> None:
        """Record an envelope that needs no commit of its own: it is committed in the
        transaction of the next `append` (sealed just before that one, in order, with its
        `also` statements), or at close.

        For records that can be derived again from what is already durable (a condition
        step's decision), or that a durable append is about to follow (a run's end, before
        the access record of the call that ran it): if the process dies first, recovery
        recomputes the same record. Malformed contents raise ValueError here, as in `append`.
        """
        draft = self._draft(execution_id, kind, step_id, status, payload, snapshot_hash)
        self._riders.append(_Rider(draft, also))

    def drop_riders(self, execution_ids: set[str]) -> None:
        """Forget the riders of these executions not yet taken by an append (a run whose lease
        another instance took: what it left waiting here must not be stored)."""
        self._riders = [r for r in self._riders if r.draft.execution_id not in execution_ids]

    @property
    def riding(self) -> int:
        """How many envelopes wait to ride in the next `append`'s commit."""
        return len(self._riders)

    def _draft(
        self,
        execution_id: str,
        kind: EnvelopeKind | str,
        step_id: str | None,
        status: str | None,
        payload: Any,
        snapshot_hash: str | None,
    ) -> EnvelopeDraft:
        self._check_open()
        draft = EnvelopeDraft.build(
            execution_id=execution_id,
            kind=kind,
            policy_hash=self._policy_hash,
            step_id=step_id,
            status=status,
            payload=payload,
            canonical_snapshot_hash=snapshot_hash,
        )
        if (
            draft.has_tombstone
            and draft.kind is not EnvelopeKind.ERASE
            and execution_id not in self._erased
        ):
            raise LedgerError(
                f"payload of execution {execution_id!r} holds a tombstone, but no erase envelope "
                "covering that execution was recorded before"
            )
        return draft

    def _queue_riders(self) -> None:
        """At close: riders nobody carried commit on their own (the last one carries the rest)."""
        if not self._riders:
            return
        *riders, carrier = self._riders
        self._riders = []
        future: asyncio.Future[GovernanceEnvelope] = asyncio.get_running_loop().create_future()
        future.add_done_callback(lambda done: done.cancelled() or done.exception())
        self._pending.append(_Pending(carrier.draft, future, carrier.also, tuple(riders)))

    def _now(self) -> int:
        if self._clock is None:
            return time.time_ns() // 1000
        return round(self._clock.now() * 1_000_000)

    async def _write_loop(self) -> None:
        batch: list[_Pending] = []
        try:
            while True:
                if not self._pending:
                    if self._closing:
                        return
                    self._wakeup.clear()
                    await self._wait_for_work()
                    continue
                count = min(len(self._pending), self._max_batch)
                batch = [self._pending.popleft() for _ in range(count)]
                async with self._lock:
                    await self._commit(batch)
                    if self._checkpoint_due():
                        await self._auto_checkpoint()
                if self._failure is not None:
                    return
        except BaseException as exc:
            self._failure = LedgerClosedError(f"ledger writer stopped: {exc!r}")
            raise
        finally:
            # Nobody may wait forever: fail whatever was taken or queued and not acknowledged.
            failure = self._failure or LedgerClosedError(f"ledger {self._origin!r} is closed")
            for pending in (*batch, *self._pending):
                if not pending.future.done():
                    pending.future.set_exception(failure)
            self._pending.clear()

    def _checkpointed(self) -> int:
        return 0 if self._last_checkpoint is None else self._last_checkpoint.tree_size

    def _checkpoint_due(self) -> bool:
        """Every `checkpoint_every` envelopes, or `checkpoint_interval_seconds` after the last
        checkpoint once something new was committed (checked after commits too, so a busy
        ledger gets its timed checkpoints)."""
        new = self._tree.size - self._checkpointed()
        if new <= 0:
            return False
        if new >= self._checkpoint_every:
            return True
        interval = self._checkpoint_interval
        return interval is not None and self._timer.now() - self._last_checkpoint_time >= interval

    async def _wait_for_work(self) -> None:
        """Sleep until an append arrives, or a timed checkpoint falls due (then cut it)."""
        if self._checkpoint_interval is None or self._tree.size == self._checkpointed():
            await self._wakeup.wait()
            return
        due = self._last_checkpoint_time + self._checkpoint_interval - self._timer.now()
        waking = asyncio.ensure_future(self._wakeup.wait())
        timer = asyncio.ensure_future(self._timer.sleep(max(due, 0.0)))
        try:
            done, _ = await asyncio.wait((waking, timer), return_when=asyncio.FIRST_COMPLETED)
        finally:
            waking.cancel()
            timer.cancel()
        if waking not in done:  # the timer: nothing appended, and a checkpoint is due
            async with self._lock:
                await self._auto_checkpoint()

    async def _auto_checkpoint(self) -> None:
        # A failed automatic checkpoint must not stop appends: the next commit retries it.
        try:
            await self._cut_checkpoint()
            self.last_checkpoint_error = None
        except Exception as exc:
            self.last_checkpoint_error = exc

    async def _commit(self, batch: list[_Pending]) -> None:
        """Seal `batch` after the store's true head and store it in one transaction, then
        acknowledge it. Envelopes other processes appended meanwhile are taken in first (the
        Merkle tree and head follow the store, whoever wrote to it)."""
        sealed_here: list[GovernanceEnvelope] = []
        sealing_failed: list[BaseException] = []

        def seal(newcomers: list[GovernanceEnvelope]) -> list[GovernanceEnvelope]:
            self._take_in(newcomers)
            sealed_here.clear()
            seq, prev, recorded_at = self._tree.size, self._head_hash, self._last_recorded_at
            try:
                for pending in batch:
                    for draft in (*(rider.draft for rider in pending.riders), pending.draft):
                        recorded_at = max(recorded_at, self._now())
                        envelope = draft.seal(seq, prev, recorded_at)
                        sealed_here.append(envelope)
                        seq, prev = seq + 1, envelope.entry_hash
            except BaseException as exc:
                sealing_failed.append(exc)
                raise
            return sealed_here

        also = [
            statement
            for pending in batch
            for statements in (*(rider.also for rider in pending.riders), pending.also)
            for statement in statements
        ]
        try:
            _, envelopes = await self._store.append_after(self._tree.size, seal, also)
        except Exception as exc:
            if sealing_failed:
                raise  # our own fault (e.g. a clock that cannot be sealed): stop the writer
            if not sealed_here or not await self._committed_anyway(sealed_here):
                if also and len(batch) > 1 and self._failure is None:
                    # One caller's statement may be what the store refused: each alone, so
                    # that only that caller fails.
                    for pending in batch:
                        await self._commit([pending])
                    return
                error = (
                    exc if isinstance(exc, LedgerError) else LedgerError(f"append failed: {exc}")
                )
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(error)
                return
            envelopes = sealed_here
        self._take_in(envelopes)
        self.stats.commits += 1
        self.stats.envelopes += len(envelopes)
        self.stats.max_batch = max(self.stats.max_batch, len(envelopes))
        carried = 0
        for pending in batch:
            carried += len(pending.riders) + 1
            if not pending.future.done():
                pending.future.set_result(envelopes[carried - 1])

    def _take_in(self, envelopes: list[GovernanceEnvelope]) -> None:
        """Advance the tree and head over committed envelopes (ours or another writer's)."""
        for envelope in envelopes:
            if envelope.seq != self._tree.size:
                continue  # already taken in
            self._tree.append(bytes.fromhex(envelope.entry_hash))
            self._head_hash = envelope.entry_hash
            self._last_recorded_at = max(self._last_recorded_at, envelope.recorded_at)
            self._erased |= erased_executions(
                envelope.execution_id, envelope.kind, envelope.payload
            )

    async def _catch_up(self) -> None:
        """Take in what other writers appended (before a checkpoint or a proof)."""
        self._take_in(await self._store.read_range(self._tree.size, 2**62))

    async def _committed_anyway(self, envelopes: list[GovernanceEnvelope]) -> bool:
        """After a failed append: did our commit happen after all (an error past COMMIT)?"""
        try:
            stored = await self._store.read_range(envelopes[0].seq, envelopes[-1].seq + 1)
        except Exception as exc:
            self._failure = LedgerClosedError(f"cannot read the store after a failed append: {exc}")
            return False
        return [e.entry_hash for e in stored] == [e.entry_hash for e in envelopes]

    # -- checkpoints and proofs ------------------------------------------------------------

    async def checkpoint(self) -> CheckpointRecord | None:
        """Sign and save a checkpoint of every committed envelope now.

        Returns it, or the last checkpoint when nothing was appended since, or None when the
        ledger is empty.
        """
        self._check_open()
        async with self._lock:
            return await self._cut_checkpoint()

    async def _cut_checkpoint(self) -> CheckpointRecord | None:
        for _ in range(_CHECKPOINT_ATTEMPTS - 1):
            try:
                return await self._try_checkpoint()
            except ChainError:
                continue  # another writer saved the next checkpoint first: build on it
        return await self._try_checkpoint()

    async def _try_checkpoint(self) -> CheckpointRecord | None:
        # Another process sharing the store may have appended, or checkpointed, meanwhile.
        await self._catch_up()
        stored = await self._store.last_checkpoint()
        if stored is not None and (
            self._last_checkpoint is None or stored.index > self._last_checkpoint.index
        ):
            self._last_checkpoint = stored
        size, last = self._tree.size, self._last_checkpoint
        if size == 0 or (last is not None and last.tree_size >= size):
            return last
        root = self._tree.root(size)
        if last is not None:
            # Consistent by construction (the tree only grows); checked as an auditor would.
            proof = self._tree.consistency_proof(last.tree_size, size)
            verify_consistency(last.tree_size, size, proof, last.root, root)
        note = sign_checkpoint(Checkpoint(self._origin, size, root), self._signers)
        index = 0 if last is None else last.index + 1
        record = CheckpointRecord(index, size, root, note, self._now())
        await self._store.save_checkpoint(record)
        self._last_checkpoint = record
        self._last_checkpoint_time = self._timer.now()
        return record

    async def proof_bundle(self, seq: int, since_size: int | None = None) -> dict[str, Any]:
        """A JSON-able proof that envelope `seq` is in the log: the envelope, its leaf index, the
        latest signed checkpoint and an inclusion proof against it (cut first if the latest does
        not cover `seq`). Check it with `governance.verify.verify_proof_bundle`. With
        `since_size` (the size of a checkpoint the auditor holds) it also carries a consistency
        proof from that size to its checkpoint (`governance.consistency`)."""
        if since_size is not None and since_size < 1:
            raise LedgerError(
                f"since size {since_size}: a checkpoint to compare with holds 1 or more"
            )
        if seq >= self._tree.size:
            await self._catch_up()
        if not 0 <= seq < self._tree.size:
            raise LedgerError(f"seq {seq} is not in the ledger (size {self._tree.size})")
        checkpoint = self._last_checkpoint
        if checkpoint is None or checkpoint.tree_size <= seq:
            checkpoint = await self.checkpoint()
            assert checkpoint is not None  # the ledger holds `seq`, so it is not empty
        envelopes = await self._store.read_range(seq, seq + 1)
        if not envelopes:
            raise ChainError(f"seq {seq} is committed but the store does not return it")
        proof = self._tree.inclusion_proof(seq, checkpoint.tree_size)
        bundle = build_proof_bundle(
            envelopes[0], self._origin, checkpoint.note, checkpoint.tree_size, proof
        )
        if since_size is not None:
            size = checkpoint.tree_size
            grown = None if since_size > size else self._tree.consistency_proof(since_size, size)
            bundle["consistency"] = consistency_part(since_size, grown)
        return bundle

    def inclusion_proof(self, seq: int, size: int) -> list[bytes]:
        """The RFC 9162 inclusion proof of envelope `seq` in the tree of `size` envelopes."""
        return self._tree.inclusion_proof(seq, size)

    def consistency_proof(self, size1: int, size2: int) -> list[bytes]:
        """The RFC 9162 consistency proof between two sizes this process's tree holds."""
        return self._tree.consistency_proof(size1, size2)

    async def consistency_bundle(self, old_size: int) -> dict[str, Any]:
        """The latest signed checkpoint (cut now if envelopes were appended since) and a
        consistency proof from `old_size` to it: what an auditor holding a checkpoint of that
        size checks with `governance.consistency.check_consistency`. When the ledger holds
        fewer than `old_size` envelopes there is no proof, and the checkpoint shows it."""
        if old_size < 1:
            raise LedgerError(f"old size {old_size}: a checkpoint to compare with holds 1 or more")
        await self._catch_up()
        checkpoint = await self.checkpoint()
        if checkpoint is None:
            raise LedgerError("the ledger is empty: it has no checkpoint to compare with")
        size = checkpoint.tree_size
        proof = None if size < old_size else self._tree.consistency_proof(old_size, size)
        return build_consistency_bundle(self._origin, old_size, checkpoint.note, size, proof)

    # -- the C2SP tlog-tiles view (governance.tiles) ---------------------------------------

    async def tlog_checkpoint(self) -> bytes | None:
        """The latest signed checkpoint note (cut now if envelopes were appended since)."""
        record = await self.checkpoint()
        return None if record is None else record.note

    async def tlog_tile(self, level: int | str, index: int, width: int) -> bytes | None:
        """Hash tile (level, index) or, for level "entries", the entry bundle, `width` wide;
        None if the log does not hold it (yet)."""
        start = index * TILE_WIDTH
        if tile_width(self._tree.size, 0 if level == "entries" else int(level), index) < width:
            await self._catch_up()  # another writer may have appended
        if level != "entries":
            return hash_tile(self._tree, self._tree.size, int(level), index, width)
        if tile_width(self._tree.size, 0, index) < width:
            return None
        envelopes = await self._store.read_range(start, start + width)
        return entry_bundle([bytes.fromhex(e.entry_hash) for e in envelopes])

    async def verify(self, verifier_keys: Sequence[str] | None = None) -> VerifyReport:
        """Audit the stored log (see `verify_ledger`), by default with this ledger's own keys."""
        keys = self.verifier_keys if verifier_keys is None else verifier_keys
        return await verify_ledger(self._store, keys, origin=self._origin)

    # -- queries and export ----------------------------------------------------------------

    async def query(
        self,
        *,
        execution_id: str | None = None,
        kind: EnvelopeKind | str | None = None,
        policy_hash: str | None = None,
        since: int | _dt.datetime | None = None,
        until: int | _dt.datetime | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[GovernanceEnvelope]:
        """Committed envelopes matching every given filter, in seq order.

        `since` (inclusive) and `until` (exclusive) bound `recorded_at`: microseconds or aware
        datetimes.
        """
        return await self._store.query(
            EnvelopeQuery(
                execution_id=execution_id,
                kind=None if kind is None else EnvelopeKind(kind),
                policy_hash=policy_hash,
                since=_micros(since),
                until=_micros(until),
                limit=limit,
                offset=offset,
            )
        )

    async def export_jsonl(self, target: str | os.PathLike[str] | IO[str], **filters: Any) -> int:
        """Write matching envelopes (filters as `query`, without limit/offset) as JSON lines,
        each the RFC 8785 form of the envelope; return how many were written."""
        unknown = set(filters) - {"execution_id", "kind", "policy_hash", "since", "until"}
        if unknown:
            raise TypeError(f"export_jsonl got unknown filters: {sorted(unknown)}")
        kind = filters.get("kind")
        base = EnvelopeQuery(
            execution_id=filters.get("execution_id"),
            kind=None if kind is None else EnvelopeKind(kind),
            policy_hash=filters.get("policy_hash"),
            since=_micros(filters.get("since")),
            until=_micros(filters.get("until")),
            limit=_EXPORT_PAGE,
        )
        if isinstance(target, str | os.PathLike):
            stream: IO[str] = await asyncio.to_thread(open, target, "w", encoding="utf-8")
            try:
                return await self._export(stream, base)
            finally:
                await asyncio.to_thread(stream.close)
        return await self._export(target, base)

    async def _export(self, stream: IO[str], base: EnvelopeQuery) -> int:
        written, start = 0, 0
        while True:
            page = await self._store.query(
                EnvelopeQuery(
                    execution_id=base.execution_id,
                    kind=base.kind,
                    policy_hash=base.policy_hash,
                    since=base.since,
                    until=base.until,
                    start_seq=start,
                    limit=base.limit,
                )
            )
            if not page:
                return written
            lines = "".join(
                canonical_json(envelope.model_dump(mode="json")).decode() + "\n"
                for envelope in page
            )
            await asyncio.to_thread(stream.write, lines)
            written += len(page)
            start = page[-1].seq + 1
