"""The SQLite store on real files: schema, WAL and synchronous settings, append-only triggers
(met by plain sqlite3 too), all-or-none batches, queries, schema versions."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from governance.checkpoint import Checkpoint, Signer, sign_checkpoint
from governance.envelope import GENESIS_HASH, EnvelopeDraft, EnvelopeKind, GovernanceEnvelope
from governance.errors import ChainError, LedgerError, SchemaVersionError
from governance.merkle import MerkleTree
from governance.policy import PolicySnapshot
from governance.sqlite_store import MIGRATIONS, SCHEMA_VERSION, SqliteLedgerStore
from governance.store import CheckpointRecord, EnvelopeQuery, LedgerStore

POLICY = PolicySnapshot(name="store-tests")
ORIGIN = "ledgerflow.test/store"


def chain(count: int, start: int = 0, prev: str = GENESIS_HASH, **fields: Any) -> list[Any]:
    """`count` sealed envelopes from seq `start` after `prev`, alternating two executions."""
    envelopes: list[GovernanceEnvelope] = []
    for seq in range(start, start + count):
        draft = EnvelopeDraft.build(
            execution_id=fields.get("execution_id", f"run-{seq % 2}"),
            kind=fields.get("kind", EnvelopeKind.STEP),
            policy_hash=fields.get("policy_hash", POLICY.policy_hash),
            step_id=f"s{seq}",
            status="SUCCESS",
            payload={"seq": seq, "x": 0.5},
        )
        envelope = draft.seal(seq, prev, 1_000_000 + seq * 10)
        envelopes.append(envelope)
        prev = envelope.entry_hash
    return envelopes


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteLedgerStore]:
    async with SqliteLedgerStore(tmp_path / "ledger.db") as opened:
        await opened.put_policy(POLICY)
        yield opened


def raw(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None)


def insert_row(connection: sqlite3.Connection, envelope: GovernanceEnvelope, verb: str) -> None:
    connection.execute(
        f"{verb} envelopes VALUES (?,?,?,?,?,?,?,?,?,?,?)",
        (
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
        ),
    )


def test_store_satisfies_the_protocol(tmp_path: Path) -> None:
    assert isinstance(SqliteLedgerStore(tmp_path / "x.db"), LedgerStore)


async def test_schema_and_pragmas(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    for synchronous, level in (("FULL", 2), ("NORMAL", 1)):
        async with SqliteLedgerStore(path, synchronous=synchronous, busy_timeout_ms=1234) as store:
            writer = store._writer
            assert writer is not None
            assert list(await writer.execute_fetchall("PRAGMA synchronous")) == [(level,)]
            assert list(await writer.execute_fetchall("PRAGMA busy_timeout")) == [(1234,)]
    with raw(path) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
        assert {"envelopes", "checkpoints", "policies", "signing_keys", "schema_version"} <= tables
        versions = connection.execute("SELECT version FROM schema_version").fetchall()
        assert versions == [(SCHEMA_VERSION,)]  # opened twice, migrated once
    assert [number for number, _ in MIGRATIONS] == list(range(1, SCHEMA_VERSION + 1))


async def test_bad_synchronous_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="synchronous"):
        SqliteLedgerStore(tmp_path / "x.db", synchronous="OFF")  # type: ignore[arg-type]


async def test_append_read_scan_head(store: SqliteLedgerStore) -> None:
    assert await store.head() is None
    envelopes = chain(5)
    await store.append_batch(envelopes[:2])
    await store.append_batch(envelopes[2:])
    assert await store.head() == envelopes[-1]
    assert await store.read_range(1, 4) == envelopes[1:4]
    rows = [row async for row in store.scan(2)]
    assert [row.seq for row in rows] == [2, 3, 4]
    assert rows[0].payload == '{"seq":2,"x":0.5}'
    assert rows[0].entry_hash == bytes.fromhex(envelopes[2].entry_hash)
    hashes = [h async for h in store.entry_hashes()]
    assert hashes == [bytes.fromhex(e.entry_hash) for e in envelopes]
    assert [h async for h in store.entry_hashes(1, 3)] == hashes[1:3]


async def test_scan_pages_through_large_logs(store: SqliteLedgerStore) -> None:
    envelopes = chain(4500)
    await store.append_batch(envelopes)
    assert [row.seq async for row in store.scan()] == list(range(4500))
    assert [row.seq async for row in store.scan(1999, 4001)] == list(range(1999, 4001))


async def test_batch_out_of_line_is_refused_whole(store: SqliteLedgerStore) -> None:
    envelopes = chain(4)
    await store.append_batch(envelopes[:2])
    # A batch whose second envelope skips a seq: the first must not be stored either.
    with pytest.raises(ChainError, match="seq must be"):
        await store.append_batch([envelopes[2], chain(1, start=4, prev=envelopes[3].entry_hash)[0]])
    assert (await store.head()) == envelopes[1]
    with pytest.raises(ChainError, match="prev_hash"):
        await store.append_batch(chain(1, start=2, prev="ab" * 32))
    with pytest.raises(ChainError, match="seq must be"):
        await store.append_batch(envelopes[1:2])  # a replay of a stored envelope
    await store.append_batch(envelopes[2:])
    assert (await store.head()) == envelopes[3]


@pytest.mark.parametrize("size", [3, 1200])
async def test_bad_row_inside_a_batch_refuses_it_whole(store: SqliteLedgerStore, size: int) -> None:
    # 1200 rows take several INSERT statements in one transaction; 3 take one statement.
    envelopes = chain(size)
    middle = size // 2
    envelopes[middle] = chain(1, start=middle, prev="ab" * 32)[0]
    with pytest.raises(ChainError, match="prev_hash"):
        await store.append_batch(envelopes)
    assert await store.head() is None
    await store.append_batch(chain(size))
    assert [h async for h in store.entry_hashes()] == [
        bytes.fromhex(e.entry_hash) for e in chain(size)
    ]


async def test_queries(store: SqliteLedgerStore) -> None:
    other = PolicySnapshot(name="other")
    await store.put_policy(other)
    first = chain(6)
    second = chain(2, start=6, prev=first[-1].entry_hash, policy_hash=other.policy_hash)
    third = chain(1, start=8, prev=second[-1].entry_hash, kind="denied", execution_id="run-9")
    await store.append_batch([*first, *second, *third])

    async def seqs(**filters: Any) -> list[int]:
        return [e.seq for e in await store.query(EnvelopeQuery(**filters))]

    assert await seqs() == list(range(9))
    assert await seqs(execution_id="run-1") == [1, 3, 5, 7]
    assert await seqs(kind=EnvelopeKind.DENIED) == [8]
    assert await seqs(policy_hash=other.policy_hash) == [6, 7]
    assert await seqs(since=1_000_020, until=1_000_050) == [2, 3, 4]
    assert await seqs(execution_id="run-0", limit=2, offset=1) == [2, 4]
    assert await seqs(start_seq=7) == [7, 8]
    assert await seqs(execution_id="nobody") == []


async def test_policies_keys_and_origin(store: SqliteLedgerStore, tmp_path: Path) -> None:
    assert await store.put_policy(POLICY) == POLICY.policy_hash  # idempotent
    assert await store.get_policy(POLICY.policy_hash) == POLICY
    assert await store.get_policy("00" * 32) is None
    assert await store.list_policies() == [(POLICY.policy_hash, POLICY.canonical_bytes().decode())]
    keys = [Signer.generate(f"k{i}").verifier().to_text() for i in range(2)]
    await store.add_keys(keys)
    await store.add_keys(keys[:1])
    assert sorted(await store.list_keys()) == sorted(keys)
    assert await store.get_origin() is None
    await store.set_origin(ORIGIN)
    await store.set_origin(ORIGIN)
    with pytest.raises(LedgerError, match="belongs to origin"):
        await store.set_origin("another.example/log")


async def test_checkpoints_are_append_only_and_grow(store: SqliteLedgerStore) -> None:
    signer = Signer.generate(ORIGIN)
    envelopes = chain(4)
    await store.append_batch(envelopes)
    tree = MerkleTree()
    for envelope in envelopes:
        tree.append(bytes.fromhex(envelope.entry_hash))

    def record(index: int, size: int) -> CheckpointRecord:
        root = tree.root(min(size, tree.size))
        note = sign_checkpoint(Checkpoint(ORIGIN, size, root), [signer])
        return CheckpointRecord(index, size, root, note, 5)

    assert await store.last_checkpoint() is None
    await store.save_checkpoint(record(0, 2))
    with pytest.raises(ChainError, match="more entries"):
        await store.save_checkpoint(record(1, 2))
    with pytest.raises(ChainError, match="not stored"):
        await store.save_checkpoint(record(1, 5))
    with pytest.raises(ChainError, match="idx"):
        await store.save_checkpoint(record(2, 3))
    await store.save_checkpoint(record(1, 4))
    assert await store.list_checkpoints() == [record(0, 2), record(1, 4)]
    assert await store.last_checkpoint() == record(1, 4)
    with raw(store.path) as connection:
        for statement in ("UPDATE checkpoints SET note = ''", "DELETE FROM checkpoints"):
            with pytest.raises(sqlite3.IntegrityError, match="append-only"):
                connection.execute(statement)
        with pytest.raises(sqlite3.IntegrityError, match="idx must be"):
            connection.execute("REPLACE INTO checkpoints VALUES (0, 4, ?, 'x', 0)", (bytes(32),))


async def test_triggers_refuse_plain_sqlite_writes(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    envelopes = chain(4)
    async with SqliteLedgerStore(path) as store:
        await store.put_policy(POLICY)
        await store.add_keys([Signer.generate("k").verifier().to_text()])
        await store.set_origin(ORIGIN)
        await store.append_batch(envelopes[:3])
    with raw(path) as connection:
        for statement in (
            "UPDATE envelopes SET payload = '{}' WHERE seq = 1",
            "DELETE FROM envelopes WHERE seq = 2",
            "DELETE FROM envelopes",
            "UPDATE policies SET body = '{}'",
            "DELETE FROM policies",
            "DELETE FROM signing_keys",
            "UPDATE ledger_meta SET value = 'x'",
        ):
            with pytest.raises(sqlite3.IntegrityError, match="append-only"):
                connection.execute(statement)
        # INSERT with a wrong seq, a wrong prev_hash, or over an existing row (REPLACE).
        with pytest.raises(sqlite3.IntegrityError, match="seq must be"):
            insert_row(
                connection, chain(1, start=5, prev=envelopes[2].entry_hash)[0], "INSERT INTO"
            )
        with pytest.raises(sqlite3.IntegrityError, match="prev_hash"):
            insert_row(connection, chain(1, start=3, prev="ab" * 32)[0], "INSERT INTO")
        forged = chain(1, start=1, prev=envelopes[0].entry_hash, execution_id="forged")[0]
        for verb in ("REPLACE INTO", "INSERT OR REPLACE INTO", "INSERT OR IGNORE INTO"):
            with pytest.raises(sqlite3.IntegrityError, match="seq must be"):
                insert_row(connection, forged, verb)
        with pytest.raises(sqlite3.IntegrityError, match="written once"):
            connection.execute("REPLACE INTO policies VALUES (?, '{}', 0)", (POLICY.policy_hash,))
        # The next envelope, correctly chained, is accepted: the triggers check form, not origin.
        insert_row(connection, envelopes[3], "INSERT INTO")
        assert connection.execute("SELECT COUNT(*) FROM envelopes").fetchone() == (4,)


async def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    async with SqliteLedgerStore(path):
        pass
    with raw(path) as connection:
        connection.execute("INSERT INTO schema_version VALUES (?, 0)", (SCHEMA_VERSION + 6,))
    for readonly in (False, True):
        with pytest.raises(SchemaVersionError) as caught:
            await SqliteLedgerStore(path, readonly=readonly).open()
        message = str(caught.value)
        assert f"version {SCHEMA_VERSION + 6}" in message
        assert f"version {SCHEMA_VERSION} " in message
        assert (caught.value.found, caught.value.supported) == (SCHEMA_VERSION + 6, SCHEMA_VERSION)


async def test_foreign_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    with raw(path) as connection:
        connection.execute("CREATE TABLE t (x)")
    with pytest.raises(LedgerError, match="not a ledgerflow ledger"):
        await SqliteLedgerStore(path).open()


async def test_readonly_store(tmp_path: Path) -> None:
    with pytest.raises(LedgerError, match="does not exist"):
        await SqliteLedgerStore(tmp_path / "missing.db", readonly=True).open()
    path = tmp_path / "ledger.db"
    async with SqliteLedgerStore(path) as store:
        await store.put_policy(POLICY)
        await store.append_batch(chain(2))
    async with SqliteLedgerStore(path, readonly=True) as reader:
        assert (await reader.head()) == chain(2)[1]
        with pytest.raises(LedgerError, match="read-only"):
            await reader.append_batch(chain(1, start=2, prev=chain(2)[1].entry_hash))
    assert not (tmp_path / "missing.db").exists()


async def test_closed_store_refuses_use(tmp_path: Path) -> None:
    store = SqliteLedgerStore(tmp_path / "ledger.db")
    with pytest.raises(LedgerError, match="not open"):
        await store.head()
    await store.open()
    await store.close()
    with pytest.raises(LedgerError, match="not open"):
        await store.append_batch(chain(1))
