"""The PostgreSQL store where it differs from the SQLite one: the server's own triggers refuse
any client's changes (UPDATE, DELETE, TRUNCATE, an INSERT out of line), a reader's pool is
read-only at the server, instances starting together migrate once, schema versions and foreign
tables are refused, and an owner who bypasses the triggers is caught by verify."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest
from psycopg import sql

from governance.checkpoint import Signer
from governance.envelope import GovernanceEnvelope
from governance.errors import LedgerError
from governance.ledger import Ledger
from governance.storage.database_url import DatabaseUrl
from governance.storage.ledger_port import row_values
from governance.storage.postgres_database import create_pool
from governance.storage.postgres_ledger import SCHEMA_VERSION, PostgresLedgerStore
from governance.verify import verify_ledger_at
from kernel.errors import SchemaVersionError
from tests.governance.ledger_rows import ORIGIN, POLICY, Checkpoints, chain
from tests.postgres import admin


def owner(schema: str) -> psycopg.Connection[Any]:
    """A plain psycopg connection as the tables' owner, in the ledger's schema."""
    connection = admin()
    connection.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
    return connection


def insert_row(connection: psycopg.Connection[Any], envelope: GovernanceEnvelope) -> None:
    connection.execute(
        "INSERT INTO envelopes VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
        row_values(envelope),
    )


async def stored(url: str, envelopes: list[GovernanceEnvelope]) -> None:
    async with PostgresLedgerStore(url) as store:
        await store.put_policy(POLICY)
        await store.add_keys([Signer.generate("k").verifier().to_text()])
        await store.set_origin(ORIGIN)
        await store.append_batch(envelopes)
        await store.save_checkpoint(Checkpoints(envelopes).record(0, len(envelopes)))


async def test_triggers_refuse_changes_from_any_client(pg_url: str, pg_schema: str) -> None:
    envelopes = chain(4)
    await stored(pg_url, envelopes[:3])
    with owner(pg_schema) as connection:
        for statement in (
            "UPDATE envelopes SET payload = '{}' WHERE seq = 1",
            "DELETE FROM envelopes WHERE seq = 2",
            "TRUNCATE envelopes",
            "UPDATE checkpoints SET note = ''",
            "DELETE FROM checkpoints",
            "TRUNCATE checkpoints CASCADE",
            "UPDATE policies SET body = '{}'",
            "DELETE FROM signing_keys",
            "UPDATE ledger_meta SET value = 'x'",
            "DELETE FROM schema_version",
        ):
            with pytest.raises(psycopg.errors.IntegrityConstraintViolation, match="append-only"):
                connection.execute(statement)
        with pytest.raises(psycopg.errors.IntegrityConstraintViolation, match="seq must be"):
            insert_row(connection, chain(1, start=5, prev=envelopes[2].entry_hash)[0])
        with pytest.raises(psycopg.errors.IntegrityConstraintViolation, match="prev_hash"):
            insert_row(connection, chain(1, start=3, prev="ab" * 32)[0])
        with pytest.raises(psycopg.errors.IntegrityConstraintViolation, match="append-only"):
            connection.execute(
                "INSERT INTO policies VALUES (%s, '{}', 0) "
                "ON CONFLICT (policy_hash) DO UPDATE SET body = excluded.body",
                (POLICY.policy_hash,),
            )
        # The next envelope, correctly chained, is accepted: the triggers check form, not origin.
        insert_row(connection, envelopes[3])
        assert connection.execute("SELECT count(*) FROM envelopes").fetchone() == (4,)


async def test_a_reader_pool_is_read_only_at_the_server(pg_url: str) -> None:
    await stored(pg_url, chain(2))
    pool = await create_pool(DatabaseUrl.parse(pg_url), readonly=True)
    try:
        with pytest.raises(Exception, match="read-only transaction"):
            await pool.execute("INSERT INTO ledger_meta VALUES ('x', 'y')")
        store = PostgresLedgerStore(pg_url, readonly=True, pool=pool)
        await store.open()
        assert (await store.head()) == chain(2)[1]
        with pytest.raises(LedgerError, match="read-only"):
            await store.append_batch(chain(1, start=2, prev=chain(2)[1].entry_hash))
    finally:
        await pool.close()


async def test_instances_starting_together_migrate_once(pg_url: str, pg_schema: str) -> None:
    stores = [PostgresLedgerStore(pg_url) for _ in range(4)]
    await asyncio.gather(*(store.open() for store in stores))
    for store in stores:
        await store.close()
    with owner(pg_schema) as connection:
        versions = connection.execute("SELECT version FROM schema_version").fetchall()
    assert versions == [(SCHEMA_VERSION,)]


async def test_newer_schema_and_foreign_tables_are_refused(pg_url: str, pg_schema: str) -> None:
    await stored(pg_url, chain(1))
    with owner(pg_schema) as connection:
        connection.execute("ALTER TABLE schema_version DISABLE TRIGGER USER")
        connection.execute("INSERT INTO schema_version VALUES (%s, 0)", (SCHEMA_VERSION + 6,))
    for readonly in (False, True):
        with pytest.raises(SchemaVersionError) as caught:
            await PostgresLedgerStore(pg_url, readonly=readonly).open()
        assert (caught.value.found, caught.value.supported) == (SCHEMA_VERSION + 6, SCHEMA_VERSION)
        assert "upgrade ledgerflow" in str(caught.value)
    with owner(pg_schema) as connection:
        connection.execute("DROP TABLE schema_version")
    with pytest.raises(LedgerError, match="not a ledgerflow ledger"):
        await PostgresLedgerStore(pg_url).open()


async def test_an_empty_schema_holds_no_ledger_for_a_reader(pg_url: str) -> None:
    with pytest.raises(LedgerError, match="holds no ledger"):
        await PostgresLedgerStore(pg_url, readonly=True).open()


async def test_the_owner_bypassing_the_triggers_is_caught_by_verify(
    pg_url: str, pg_schema: str
) -> None:
    signer = Signer.generate("tamper")
    ledger = await Ledger.open_at(pg_url, signer=signer, origin=ORIGIN)
    for i in range(10):
        await ledger.append(f"run-{i % 3}", "step", step_id=f"s{i}", payload={"amount": i})
    await ledger.close()  # signs a checkpoint of all ten
    keys = [signer.verifier().to_text()]
    assert (await verify_ledger_at(pg_url, keys)).ok
    with owner(pg_schema) as connection:
        connection.execute("ALTER TABLE envelopes DISABLE TRIGGER envelopes_append_only")
        connection.execute(
            "UPDATE envelopes SET payload = replace(payload, '\"amount\":4', '\"amount\":400') "
            "WHERE seq = 4"
        )
    report = await verify_ledger_at(pg_url, keys)
    assert not report.ok and report.first_bad_seq == 4, report
