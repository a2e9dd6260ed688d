"""The SQLite store on real files, where it differs from the PostgreSQL one: schema, WAL and
synchronous settings, append-only triggers met by plain sqlite3 too, REPLACE, schema versions.
What both stores promise is in test_store_contract.py."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from governance.checkpoint import Signer
from governance.envelope import GovernanceEnvelope
from governance.errors import LedgerError
from governance.storage.ledger_port import row_values
from governance.storage.sqlite_ledger import MIGRATIONS, SCHEMA_VERSION, SqliteLedgerStore
from kernel.errors import SchemaVersionError
from tests.governance.ledger_rows import ORIGIN, POLICY, Checkpoints, chain


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
        row_values(envelope),
    )


async def test_schema_and_pragmas(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    for synchronous, level in (("FULL", 2), ("NORMAL", 1)):
        async with SqliteLedgerStore(path, synchronous=synchronous, busy_timeout_ms=1234) as store:
            writer = store._writer
            assert writer is not None
            assert await writer.fetch("PRAGMA synchronous") == [(level,)]
            # A call on the connection's thread waits for other writers as configured; one
            # run inline on the loop's thread does not wait at all.
            db = writer._connection
            assert db is not None

            def timeout(connection: sqlite3.Connection) -> list[Any]:
                return connection.execute("PRAGMA busy_timeout").fetchall()

            assert await writer._run(partial(writer._waiting, db, timeout)) == [(1234,)]
            assert writer._without_waiting(db, timeout) == [(0,)]
            assert await writer._run(partial(writer._waiting, db, timeout)) == [(1234,)]
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


async def test_checkpoints_refuse_plain_sqlite_writes(store: SqliteLedgerStore) -> None:
    envelopes = chain(4)
    await store.append_batch(envelopes)
    await store.save_checkpoint(Checkpoints(envelopes).record(0, 2))
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


async def test_readonly_store_needs_an_existing_file(tmp_path: Path) -> None:
    with pytest.raises(LedgerError, match="does not exist"):
        await SqliteLedgerStore(tmp_path / "missing.db", readonly=True).open()
    assert not (tmp_path / "missing.db").exists()
