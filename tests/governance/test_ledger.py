"""The Ledger on real files: chaining, group commit, checkpoints, proof bundles, key rotation,
queries and export, erasure rules, and what happens when the store fails."""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import json
import sqlite3
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

import pytest

from governance.checkpoint import Signer, open_checkpoint
from governance.envelope import GENESIS_HASH, EnvelopeDraft, EnvelopeKind, GovernanceEnvelope
from governance.errors import (
    BundleError,
    ChainError,
    CheckpointError,
    LedgerClosedError,
    LedgerError,
    ProofError,
)
from governance.ledger import Ledger
from governance.merkle import MerkleTree
from governance.policy import PolicySnapshot
from governance.storage.ledger_port import Statement
from governance.storage.sqlite_ledger import SqliteLedgerStore
from governance.verify import verify_ledger_at, verify_proof_bundle
from kernel.capability import TOMBSTONE
from kernel.clock import ManualClock

ORIGIN = "ledgerflow.test/ledger"
SIGNER = Signer.generate(ORIGIN)
KEYS = [SIGNER.verifier().to_text()]
POLICY = PolicySnapshot(name="ledger-tests", tools_allow=["lookup"], max_cost_usd="5")


async def open_ledger(path: Path, **options: Any) -> Ledger:
    options.setdefault("policy", POLICY)
    return await Ledger.open_at(
        path, signer=options.pop("signer", SIGNER), origin=ORIGIN, **options
    )


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "ledger.db"


# -- appending and chaining ------------------------------------------------------------------


async def test_append_chains_from_genesis(path: Path) -> None:
    async with await open_ledger(path) as ledger:
        first = await ledger.append("run-1", "run_started", payload={"program": "p"})
        second = await ledger.append(
            "run-1",
            EnvelopeKind.STEP,
            step_id="charge",
            status="SUCCESS",
            payload={"amount": 250},
            snapshot_hash="ab" * 32,
        )
        assert (first.seq, first.prev_hash) == (0, GENESIS_HASH)
        assert (second.seq, second.prev_hash) == (1, first.entry_hash)
        assert second.policy_hash == POLICY.policy_hash == ledger.policy_hash
        assert second.canonical_snapshot_hash == "ab" * 32
        assert first.hash_ok() and second.hash_ok()
        assert (ledger.size, ledger.head_hash) == (2, second.entry_hash)
        assert await ledger.store.read_range(0, 2) == [first, second]


async def test_recorded_at_never_goes_back(path: Path) -> None:
    clock = ManualClock(start=1_700_000_000.0)
    async with await open_ledger(path, clock=clock) as ledger:
        a = await ledger.append("r", "step")
        clock.advance(-60)  # the wall clock steps back
        b = await ledger.append("r", "step")
        clock.advance(120)
        c = await ledger.append("r", "step")
    assert a.recorded_at == 1_700_000_000_000_000
    assert b.recorded_at == a.recorded_at
    assert c.recorded_at == 1_700_000_060_000_000


async def test_bad_contents_are_refused_before_queueing(path: Path) -> None:
    async with await open_ledger(path) as ledger:
        with pytest.raises(ValueError, match="kind"):
            await ledger.append("r", "checkpoint")
        with pytest.raises(ValueError, match="canonical_snapshot_hash"):
            await ledger.append("r", "step", snapshot_hash="nope")
        with pytest.raises(ValueError):
            await ledger.append("r", "step", payload=float("nan"))
        assert ledger.size == 0
        await ledger.append("r", "step")
        assert ledger.size == 1


async def test_concurrent_appends_make_one_gapless_chain(path: Path) -> None:
    async with await open_ledger(path, checkpoint_every=1000) as ledger:

        async def worker(task: int) -> list[int]:
            seqs = []
            for number in range(200):
                envelope = await ledger.append(
                    f"run-{task}", "step", step_id=f"s{number}", payload={"n": number}
                )
                seqs.append(envelope.seq)
            return seqs

        results = await asyncio.gather(*(worker(task) for task in range(50)))
        assert sorted(seq for seqs in results for seq in seqs) == list(range(10_000))
        assert all(seqs == sorted(seqs) for seqs in results)  # each task's appends in order
        assert ledger.stats.commits < ledger.stats.envelopes
        assert (await ledger.verify()).ok  # while the writer may still be cutting a checkpoint
    report = await verify_ledger_at(path, KEYS)
    assert report.ok, report
    assert (report.entries_checked, report.checkpoints_checked) == (10_000, 10)


async def test_group_commit_shares_transactions(path: Path) -> None:
    async with await open_ledger(path, synchronous="FULL") as ledger:
        await asyncio.gather(*(ledger.append(f"r{i}", "step") for i in range(100)))
        stats = ledger.stats
        assert stats.envelopes == 100
        assert stats.max_batch > 1
        assert stats.mean_batch > 1
        assert stats.commits < 100


async def test_statements_ride_in_the_envelope_commit_and_fail_only_their_caller(
    path: Path,
) -> None:
    note = "INSERT INTO notes VALUES (?)"
    async with await open_ledger(path) as ledger:
        with sqlite3.connect(path) as db:  # an operational table beside the ledger's
            db.execute("CREATE TABLE notes (run TEXT PRIMARY KEY)")
        good, bad, plain = await asyncio.gather(
            ledger.append("r1", "step", also=[(note, ("r1",))]),
            ledger.append("r2", "step", also=[("INSERT INTO no_such_table VALUES (?)", ("r2",))]),
            ledger.append("r3", "step"),
            return_exceptions=True,
        )
        assert isinstance(bad, LedgerError) and "no_such_table" in str(bad)
        assert isinstance(good, GovernanceEnvelope) and isinstance(plain, GovernanceEnvelope)
        assert [e.execution_id for e in await ledger.query()] == ["r1", "r3"]
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT run FROM notes").fetchall() == [("r1",)]
    report = await verify_ledger_at(path, KEYS)
    assert report.ok, report


async def test_riders_are_committed_in_the_next_appends_transaction_just_before_it(
    path: Path,
) -> None:
    async with await open_ledger(path) as ledger:
        await ledger.append("r1", "run_started")
        commits = ledger.stats.commits
        ledger.append_riding("r1", "step", step_id="c1", payload={"decided": "yes"})
        ledger.append_riding("r1", "step", step_id="c2")
        assert ledger.riding == 2
        with sqlite3.connect(path) as other:  # not stored yet: nothing committed them
            assert other.execute("SELECT COUNT(*) FROM envelopes").fetchone() == (1,)
        carrier = await ledger.append("r1", "step", step_id="t")
        assert ledger.riding == 0
        assert ledger.stats.commits == commits + 1  # one transaction for the three
        stored = await ledger.query(execution_id="r1")
        assert [e.step_id for e in stored] == [None, "c1", "c2", "t"]
        assert stored[-1] == carrier and stored[1].payload == {"decided": "yes"}
    report = await verify_ledger_at(path, KEYS)
    assert report.ok, report


async def test_riders_left_at_close_are_committed_by_close(path: Path) -> None:
    async with await open_ledger(path) as ledger:
        ledger.append_riding("r1", "step", step_id="c1")
        ledger.append_riding("r1", "step", step_id="c2")
    async with await open_ledger(path) as reopened:
        assert [e.step_id for e in await reopened.query()] == ["c1", "c2"]
    assert (await verify_ledger_at(path, KEYS)).ok


async def test_a_rider_is_stored_with_its_carrier_or_not_at_all(path: Path) -> None:
    async with await open_ledger(path) as ledger:
        ledger.append_riding("r1", "step", step_id="c1")
        with pytest.raises(LedgerError, match="no_such_table"):
            await ledger.append(
                "r1", "step", step_id="t", also=[("INSERT INTO no_such_table VALUES (1)", ())]
            )
        assert ledger.riding == 0  # it went with its carrier
        await ledger.append("r2", "step", step_id="next")
        assert [e.step_id for e in await ledger.query()] == ["next"]
    assert (await verify_ledger_at(path, KEYS)).ok


async def test_a_malformed_rider_is_refused_at_once_and_rides_with_nothing(path: Path) -> None:
    async with await open_ledger(path) as ledger:
        with pytest.raises(ValueError):
            ledger.append_riding("r1", "step", payload={"bad": float("nan")})
        assert ledger.riding == 0


async def test_append_returns_only_after_commit(path: Path) -> None:
    """Each acknowledged envelope is visible to another connection the moment append returns."""
    async with await open_ledger(path) as ledger:
        seen: list[int] = []

        async def worker(task: int) -> None:
            for _ in range(5):
                envelope = await ledger.append(f"r{task}", "step")
                with sqlite3.connect(path) as other:
                    row = other.execute(
                        "SELECT entry_hash FROM envelopes WHERE seq = ?", (envelope.seq,)
                    ).fetchone()
                assert row == (bytes.fromhex(envelope.entry_hash),)
                seen.append(envelope.seq)

        await asyncio.gather(*(worker(task) for task in range(10)))
        assert sorted(seen) == list(range(50))


async def test_reopen_rebuilds_the_tree_and_continues(path: Path) -> None:
    async with await open_ledger(path, checkpoint_every=7) as ledger:
        for i in range(20):
            await ledger.append("r", "step", payload=i)
        root, head = ledger.root(), ledger.head_hash
    async with await open_ledger(path, policy=None, checkpoint_every=7) as ledger:
        assert (ledger.size, ledger.root(), ledger.head_hash) == (20, root, head)
        assert ledger.policy == POLICY  # None keeps the last envelope's policy
        envelope = await ledger.append("r", "step")
        assert (envelope.seq, envelope.prev_hash) == (20, head)
    report = await verify_ledger_at(path, KEYS)
    assert report.ok, report
    assert report.entries_checked == 21


async def test_new_ledger_without_policy_uses_the_empty_policy(path: Path) -> None:
    async with await Ledger.open_at(path, signer=SIGNER, origin=ORIGIN) as ledger:
        envelope = await ledger.append("r", "step")
    assert envelope.policy_hash == PolicySnapshot().policy_hash


async def test_policy_switch(path: Path) -> None:
    stricter = PolicySnapshot(name="stricter", tools_deny=["refund"])
    async with await open_ledger(path) as ledger:
        a = await ledger.append("r", "step")
        assert await ledger.set_policy(stricter) == stricter.policy_hash
        b = await ledger.append("r", "step")
        assert (a.policy_hash, b.policy_hash) == (POLICY.policy_hash, stricter.policy_hash)
        by_policy = await ledger.query(policy_hash=stricter.policy_hash)
        [change] = [e for e in by_policy if e.kind is EnvelopeKind.POLICY]
        assert change.payload == {"name": "stricter"}  # the switch itself is on record
        assert [e for e in by_policy if e is not change] == [b]
        assert await ledger.store.get_policy(stricter.policy_hash) == stricter
    async with await open_ledger(path, policy=None) as ledger:
        assert ledger.policy == stricter


async def test_origin_is_fixed_per_file(path: Path) -> None:
    async with await open_ledger(path):
        pass
    with pytest.raises(LedgerError, match="belongs to origin"):
        await Ledger.open_at(path, signer=SIGNER, origin="another.example/log")


async def test_closed_ledger_refuses_appends(path: Path) -> None:
    ledger = await open_ledger(path)
    pending = [asyncio.ensure_future(ledger.append("r", "step")) for _ in range(5)]
    await asyncio.sleep(0)
    await ledger.close()
    assert [p.result().seq for p in pending] == list(range(5))  # queued before close: stored
    with pytest.raises(LedgerClosedError):
        await ledger.append("r", "step")
    await ledger.close()  # idempotent


# -- checkpoints -----------------------------------------------------------------------------


async def test_automatic_checkpoints_every_n(path: Path) -> None:
    async with await open_ledger(path, checkpoint_every=10, checkpoint_on_close=False) as ledger:
        for i in range(35):
            await ledger.append("r", "step", payload=i)
        checkpoints = await ledger.store.list_checkpoints()
    assert [c.tree_size for c in checkpoints] == [10, 20, 30]
    assert [c.index for c in checkpoints] == [0, 1, 2]
    body = open_checkpoint(checkpoints[-1].note, [SIGNER.verifier()], origin=ORIGIN).checkpoint
    assert (body.size, body.root) == (30, checkpoints[-1].root)


class HeldClock(ManualClock):
    """A ManualClock whose `sleep` waits until `advance` has moved time past its deadline."""

    def __init__(self) -> None:
        super().__init__()
        self._moved = asyncio.Condition()

    def advance(self, seconds: float) -> None:
        super().advance(seconds)
        asyncio.get_running_loop().create_task(self._notify())

    async def _notify(self) -> None:
        async with self._moved:
            self._moved.notify_all()

    def sleep(self, seconds: float) -> Coroutine[Any, Any, None]:
        # The deadline counts from the call, as real time would, not from when the coroutine
        # first runs (the ledger starts its timer as a task).
        return self._until(self.now() + seconds)

    async def _until(self, deadline: float) -> None:
        async with self._moved:
            await self._moved.wait_for(lambda: self.now() >= deadline)


async def _settle() -> None:
    """Let the writer task run whatever it can without I/O (no real time passes)."""
    for _ in range(50):
        await asyncio.sleep(0)


async def _until(condition: Callable[[], bool]) -> None:
    """Wait for the writer's I/O (a checkpoint's SQLite writes) until `condition` holds."""
    for _ in range(5000):
        if condition():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("the ledger writer did not get there")


async def test_timed_checkpoints(path: Path) -> None:
    clock = HeldClock()
    async with await open_ledger(path, checkpoint_interval_seconds=60, clock=clock) as ledger:
        await ledger.append("r", "step")
        clock.advance(59)
        await _settle()
        assert ledger.last_checkpoint is None  # not due yet
        clock.advance(1)
        await _until(lambda: ledger.last_checkpoint is not None)  # the idle writer's timer
        assert ledger.last_checkpoint.tree_size == 1
        clock.advance(3600)  # nothing new: no new checkpoint however long it waits
        await _settle()
        assert ledger.last_checkpoint.index == 0


async def test_timed_checkpoints_under_continuous_load(path: Path) -> None:
    clock = HeldClock()
    async with await open_ledger(path, checkpoint_interval_seconds=60, clock=clock) as ledger:
        for _ in range(40):  # an append every 5 s for 200 s
            await ledger.append("r", "step")
            clock.advance(5)
        await _until(lambda: ledger.last_checkpoint is not None and ledger.size == 40)
        # One about every 60 s of appends (12 of them), cut after the commit that found it due.
        sizes = [c.tree_size for c in await ledger.store.list_checkpoints()]
        assert len(sizes) == 3
        assert all(
            12 <= later - earlier <= 14
            for earlier, later in zip([0, *sizes[:-1]], sizes, strict=True)
        )


async def test_manual_checkpoint_and_close(path: Path) -> None:
    async with await open_ledger(path) as ledger:
        assert await ledger.checkpoint() is None  # empty
        await ledger.append("r", "step")
        first = await ledger.checkpoint()
        assert first is not None
        assert first.tree_size == 1
        assert await ledger.checkpoint() == first  # nothing new
        await ledger.append("r", "step")
    async with SqliteLedgerStore(path, readonly=True) as reader:
        assert [c.tree_size for c in await reader.list_checkpoints()] == [1, 2]


async def test_open_refuses_a_store_that_no_longer_matches_its_checkpoint(path: Path) -> None:
    async with await open_ledger(path, checkpoint_every=5) as ledger:
        for i in range(10):
            await ledger.append("r", "step", payload=i)
    with sqlite3.connect(path) as connection:
        connection.execute("DROP TRIGGER envelopes_no_delete")
        connection.execute("DELETE FROM envelopes WHERE seq >= 8")
    with pytest.raises(ChainError, match="do not match checkpoint"):
        await open_ledger(path)


async def test_open_refuses_a_log_with_gaps(path: Path) -> None:
    async with await open_ledger(path, checkpoint_on_close=False) as ledger:
        for i in range(4):
            await ledger.append("r", "step", payload=i)
    with sqlite3.connect(path) as connection:
        connection.execute("DROP TRIGGER envelopes_no_delete")
        connection.execute("DELETE FROM envelopes WHERE seq = 1")
    with pytest.raises(ChainError, match="gaps"):
        await open_ledger(path)


# -- proof bundles ---------------------------------------------------------------------------


async def make_bundle(path: Path, seq: int = 5, **options: Any) -> dict[str, Any]:
    async with await open_ledger(path, checkpoint_every=4, **options) as ledger:
        for i in range(10):
            await ledger.append(f"run-{i % 3}", "step", payload={"i": i, "cost": 0.25})
        bundle = await ledger.proof_bundle(seq)
    # The bundle is JSON: what an auditor receives.
    loaded: dict[str, Any] = json.loads(json.dumps(bundle))
    return loaded


async def test_proof_bundle_round_trip(path: Path) -> None:
    bundle = await make_bundle(path)
    assert set(bundle) == {
        "format",
        "origin",
        "envelope",
        "leaf_index",
        "tree_size",
        "inclusion_proof",
        "checkpoint",
    }
    assert (bundle["leaf_index"], bundle["tree_size"], bundle["origin"]) == (5, 8, ORIGIN)
    verify_proof_bundle(bundle, KEYS)
    verify_proof_bundle(bundle, KEYS, origin=ORIGIN)


async def test_proof_bundle_past_the_last_checkpoint_cuts_one(path: Path) -> None:
    bundle = await make_bundle(path, seq=9)
    assert bundle["tree_size"] == 10
    verify_proof_bundle(bundle, KEYS)


def _tamper(bundle: dict[str, Any], change: str) -> dict[str, Any]:
    copy: dict[str, Any] = json.loads(json.dumps(bundle))
    if change == "payload":
        copy["envelope"]["payload"]["i"] = 6
    elif change == "payload_and_hash":
        copy["envelope"]["payload"]["i"] = 6
        copy["envelope"]["entry_hash"] = GovernanceEnvelope.model_validate(
            copy["envelope"]
        ).compute_entry_hash()
    elif change == "leaf_index":
        copy["leaf_index"] = 4
    elif change == "seq_and_index":
        copy["envelope"]["seq"] = 4
        copy["leaf_index"] = 4
        copy["envelope"]["entry_hash"] = GovernanceEnvelope.model_validate(
            copy["envelope"]
        ).compute_entry_hash()
    elif change == "proof":
        copy["inclusion_proof"][0] = copy["inclusion_proof"][1]
    elif change == "proof_short":
        copy["inclusion_proof"].pop()
    elif change == "tree_size":
        copy["tree_size"] = 10
    elif change == "note":
        copy["checkpoint"] = copy["checkpoint"].replace("\n8\n", "\n9\n")
    elif change == "origin":
        copy["origin"] = "another.example/log"
    elif change == "format":
        copy["format"] = "v0"
    elif change == "missing":
        del copy["inclusion_proof"]
    return copy


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ("payload", BundleError),
        ("payload_and_hash", ProofError),
        ("leaf_index", BundleError),
        ("seq_and_index", ProofError),
        ("proof", ProofError),
        ("proof_short", ProofError),
        ("tree_size", BundleError),
        ("note", CheckpointError),
        ("origin", CheckpointError),
        ("format", BundleError),
        ("missing", BundleError),
    ],
)
async def test_tampered_bundle_is_rejected(path: Path, change: str, error: type[Exception]) -> None:
    bundle = await make_bundle(path)
    with pytest.raises(error):
        verify_proof_bundle(_tamper(bundle, change), KEYS)


async def test_bundle_needs_a_trusted_key(path: Path) -> None:
    bundle = await make_bundle(path)
    stranger = Signer.generate(ORIGIN).verifier().to_text()
    with pytest.raises(CheckpointError, match="no signature from a known key"):
        verify_proof_bundle(bundle, [stranger])
    with pytest.raises(BundleError, match="at least one"):
        verify_proof_bundle(bundle, [])
    with pytest.raises(BundleError, match="origin"):
        verify_proof_bundle(bundle, KEYS, origin="another.example/log")
    with pytest.raises(BundleError):
        verify_proof_bundle([bundle], KEYS)  # type: ignore[arg-type]


# -- co-signing and key rotation -------------------------------------------------------------


async def test_cosigned_checkpoints_verify_with_either_key(path: Path) -> None:
    witness = Signer.generate("witness.example/w1")
    bundle = await make_bundle(path, extra_signers=[witness])
    verify_proof_bundle(bundle, KEYS)
    verify_proof_bundle(bundle, [witness.verifier().to_text()])
    assert (await verify_ledger_at(path, [witness.verifier().to_text()])).ok


async def test_key_rotation(path: Path) -> None:
    old, new = SIGNER, Signer.generate(ORIGIN)
    old_key, new_key = old.verifier().to_text(), new.verifier().to_text()
    async with await open_ledger(path, signer=old, checkpoint_every=3) as ledger:
        for i in range(6):
            await ledger.append("r", "step", payload=i)
    # Rotation: sign with the new key, co-sign with the old while verifiers move over.
    async with await open_ledger(path, signer=new, extra_signers=[old], checkpoint_every=3) as led:
        for i in range(6):
            await led.append("r", "step", payload=i)
        bundle = json.loads(json.dumps(await led.proof_bundle(7)))
    verify_proof_bundle(bundle, [old_key])
    verify_proof_bundle(bundle, [new_key])
    assert (await verify_ledger_at(path, [old_key, new_key])).ok
    assert (await verify_ledger_at(path, [old_key])).ok
    only_new = await verify_ledger_at(path, [new_key])
    assert not only_new.ok
    assert only_new.bad_checkpoint == 0  # signed by the old key alone
    stored = await verify_ledger_at(path)
    assert stored.ok
    assert stored.keys == "stored"


# -- queries and export ----------------------------------------------------------------------


async def filled(path: Path, clock: ManualClock) -> Ledger:
    ledger = await open_ledger(path, clock=clock)
    for i in range(12):
        kind = "denied" if i % 4 == 3 else "step"
        await ledger.append(f"run-{i % 3}", kind, step_id=f"s{i}", payload={"i": i})
        clock.advance(1.0)
    return ledger


async def test_queries(path: Path) -> None:
    clock = ManualClock(start=1_700_000_000.0)
    async with await filled(path, clock) as ledger:

        async def seqs(**filters: Any) -> list[int]:
            return [e.seq for e in await ledger.query(**filters)]

        assert await seqs(execution_id="run-1") == [1, 4, 7, 10]
        assert await seqs(kind="denied") == [3, 7, 11]
        assert await seqs(kind=EnvelopeKind.DENIED, execution_id="run-1") == [7]
        start = dt.datetime.fromtimestamp(1_700_000_002, tz=dt.UTC)
        assert await seqs(since=start, until=start + dt.timedelta(seconds=3)) == [2, 3, 4]
        assert await seqs(since=1_700_000_010_000_000) == [10, 11]
        assert await seqs(policy_hash=POLICY.policy_hash, limit=3, offset=2) == [2, 3, 4]
        with pytest.raises(ValueError, match="time zone"):
            await ledger.query(since=dt.datetime(2024, 1, 1))


async def test_export_jsonl(path: Path, tmp_path: Path) -> None:
    clock = ManualClock(start=1_700_000_000.0)
    async with await filled(path, clock) as ledger:
        out = tmp_path / "export.jsonl"
        assert await ledger.export_jsonl(out) == 12
        stream = io.StringIO()
        assert await ledger.export_jsonl(stream, execution_id="run-2", kind="step") == 3
        with pytest.raises(TypeError, match="unknown filters"):
            await ledger.export_jsonl(stream, limit=3)
    lines = out.read_text().splitlines()
    envelopes = [GovernanceEnvelope.model_validate_json(line) for line in lines]
    assert [e.seq for e in envelopes] == list(range(12))
    assert all(e.hash_ok() for e in envelopes)
    assert lines[0] == json.dumps(
        envelopes[0].model_dump(mode="json"), sort_keys=True, separators=(",", ":")
    )
    assert [json.loads(line)["seq"] for line in stream.getvalue().splitlines()] == [2, 5, 8]


async def test_export_pages_through_large_logs(path: Path) -> None:
    async with await open_ledger(path) as ledger:
        await asyncio.gather(*(ledger.append("r", "step", payload=i) for i in range(2500)))
        stream = io.StringIO()
        assert await ledger.export_jsonl(stream) == 2500
    seqs = [json.loads(line)["seq"] for line in stream.getvalue().splitlines()]
    assert seqs == list(range(2500))


# -- erasure ---------------------------------------------------------------------------------


async def test_tombstone_needs_an_earlier_erasure(path: Path) -> None:
    async with await open_ledger(path) as ledger:
        with pytest.raises(LedgerError, match="tombstone"):
            await ledger.append("run-1", "step", payload={"card": TOMBSTONE})
        await ledger.append(
            "admin", "erase", payload={"refs": ["sec_1"], "execution_ids": ["run-1"]}
        )
        await ledger.append("run-1", "step", payload={"card": TOMBSTONE})
        with pytest.raises(LedgerError, match="tombstone"):
            await ledger.append("run-2", "resume", payload=[TOMBSTONE])
        with pytest.raises(ValueError, match="erase"):
            await ledger.append("run-2", "erase", payload="everything")
    # The erasure is remembered across a reopen.
    async with await open_ledger(path) as ledger:
        await ledger.append("run-1", "resume", payload=TOMBSTONE)
        assert (await ledger.verify()).ok


# -- store failures --------------------------------------------------------------------------


class FlakyStore:
    """A SQLite store whose next appends fail, before or after committing."""

    def __init__(self, path: Path) -> None:
        self.inner = SqliteLedgerStore(path)
        self.fail_before: int = 0
        self.fail_after: int = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def append_after(
        self,
        known_size: int,
        seal: Callable[[list[GovernanceEnvelope]], Sequence[GovernanceEnvelope]],
        also: Sequence[Statement] = (),
    ) -> tuple[list[GovernanceEnvelope], list[GovernanceEnvelope]]:
        if self.fail_before:
            self.fail_before -= 1
            seal([])  # sealed, then the write fails before COMMIT
            raise OSError("disk full")
        result = await self.inner.append_after(known_size, seal, also)
        if self.fail_after:
            self.fail_after -= 1
            raise OSError("connection lost after COMMIT")
        return result


async def test_failed_commit_fails_its_callers_and_the_ledger_goes_on(path: Path) -> None:
    store = FlakyStore(path)
    async with await Ledger.open(store, signer=SIGNER, origin=ORIGIN) as ledger:  # type: ignore[arg-type]
        await ledger.append("r", "step")
        store.fail_before = 1
        with pytest.raises(LedgerError, match="disk full"):
            await ledger.append("r", "step")
        envelope = await ledger.append("r", "step")
        assert envelope.seq == 1  # the failed envelope took no seq
        assert (await ledger.verify()).ok


async def test_error_after_commit_still_acknowledges(path: Path) -> None:
    store = FlakyStore(path)
    async with await Ledger.open(store, signer=SIGNER, origin=ORIGIN) as ledger:  # type: ignore[arg-type]
        store.fail_after = 1
        envelope = await ledger.append("r", "step")
        assert envelope.seq == 0
        assert (await ledger.append("r", "step")).seq == 1
        assert (await ledger.verify()).ok


async def test_writer_failure_fails_callers_instead_of_hanging(path: Path) -> None:
    clock = ManualClock(start=1e10)  # year 2286: recorded_at is past 2**53 µs, cannot be sealed
    ledger = await open_ledger(path, clock=clock)
    try:
        results = await asyncio.gather(
            *(ledger.append("r", "step") for _ in range(3)), return_exceptions=True
        )
        assert all(isinstance(r, LedgerClosedError) for r in results), results
        with pytest.raises(LedgerClosedError, match="writer stopped"):
            await ledger.append("r", "step")
    finally:
        await ledger.close()


async def test_bad_origin_is_refused_at_once(path: Path) -> None:
    with pytest.raises(CheckpointError, match="origin"):
        await Ledger.open_at(path, signer=SIGNER, origin="two\nlines")


async def test_appends_of_another_writer_are_taken_in_and_the_chain_stays_gapless(
    path: Path,
) -> None:
    async with await open_ledger(path) as ledger:
        await ledger.append("r", "step")
        # Another process appends to the same store behind this ledger's back.
        async with SqliteLedgerStore(path) as other:
            head = await other.head()
            assert head is not None
            intruder = await _next_envelope(head)
            await other.append_batch([intruder])
        envelope = await ledger.append("r", "step")
        assert envelope.seq == 2
        assert envelope.prev_hash == intruder.entry_hash
        assert ledger.size == 3
        assert (await ledger.verify()).ok


async def _next_envelope(head: GovernanceEnvelope) -> GovernanceEnvelope:
    draft = EnvelopeDraft.build(execution_id="x", kind="step", policy_hash=head.policy_hash)
    return draft.seal(head.seq + 1, head.entry_hash, head.recorded_at)


async def test_merkle_leaves_are_entry_hashes(path: Path) -> None:
    """The tree the ledger keeps is MerkleTree.append over the 32-byte entry hashes."""
    async with await open_ledger(path) as ledger:
        hashes = [(await ledger.append("r", "step", payload=i)).entry_hash for i in range(5)]
        tree = MerkleTree()
        for value in hashes:
            tree.append(bytes.fromhex(value))
        assert tree.root() == ledger.root()
