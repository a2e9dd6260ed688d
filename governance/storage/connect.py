"""The `LedgerStore` for a database URL: a SQLite file, or PostgreSQL (imported only then)."""

from __future__ import annotations

import os
import sqlite3
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from governance.storage.database import Database, SqliteDatabase
from governance.storage.database_url import DatabaseUrl
from governance.storage.ledger_port import LedgerStore, Synchronous
from governance.storage.sqlite_ledger import SqliteLedgerStore


def ledger_store(
    where: DatabaseUrl | str | os.PathLike[str],
    *,
    readonly: bool = False,
    synchronous: Synchronous = "FULL",
) -> LedgerStore:
    """An unopened store over `where` (a path, sqlite:///PATH or postgresql://...)."""
    url = where if isinstance(where, DatabaseUrl) else DatabaseUrl.parse(os.fspath(where))
    if url.is_postgres:
        from governance.storage.postgres_ledger import PostgresLedgerStore

        return PostgresLedgerStore(url, readonly=readonly, synchronous=synchronous)
    assert url.path is not None
    return SqliteLedgerStore(url.path, readonly=readonly, synchronous=synchronous)


def driver_errors() -> tuple[type[BaseException], ...]:
    """The base errors of the database drivers in use, for callers that report them as a
    failed command rather than a crash (the PostgreSQL ones only once they were imported)."""
    errors: list[type[BaseException]] = [sqlite3.Error]
    asyncpg = sys.modules.get("asyncpg")
    if asyncpg is not None:
        errors += [asyncpg.PostgresError, asyncpg.InterfaceError]
    psycopg = sys.modules.get("psycopg")
    if psycopg is not None:
        errors.append(psycopg.Error)
    return tuple(errors)


@asynccontextmanager
async def open_tables(
    url: DatabaseUrl, *, synchronous: Synchronous = "FULL"
) -> AsyncIterator[Database]:
    """An open `Database` over `url` for operational tables, closed after."""
    if not url.is_postgres:
        assert url.path is not None
        sqlite = SqliteDatabase(url.path, synchronous=synchronous)
        await sqlite.open()
        try:
            yield sqlite
        finally:
            await sqlite.close()
        return
    from governance.storage.postgres_database import PostgresDatabase, create_pool, ensure_schema

    pool = await create_pool(url, synchronous=synchronous, max_size=2)
    try:
        await ensure_schema(pool, url)
        yield PostgresDatabase(pool, str(url), synchronous=synchronous)
    finally:
        await pool.close()
