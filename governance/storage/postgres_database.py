"""PostgreSQL plumbing shared by the ledger store and the operational tables: the connection
pool of one process, and `PostgresDatabase`, the `governance.storage.database.Database` over it.

Imported only when a postgresql:// URL is used (asyncpg is the `postgres` extra).

Settings every connection of the pool gets:
- `search_path` = the URL's schema (when it names one), so every statement, trigger and
  function finds the ledger's own tables;
- `synchronous_commit` = on for `synchronous="FULL"` (a commit is flushed to the server's WAL
  before it is acknowledged), off for "NORMAL" (the server may lose its last commits if it
  crashes, never corrupt them), as SQLite's two levels;
- `default_transaction_read_only` = on for a reader (auditors): the server itself refuses any
  write, whatever the role could do.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from typing import Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from governance.errors import LedgerError
from governance.storage.database import ConstraintError, Dialect, Executor, PrivilegeError, Row
from governance.storage.database_url import DatabaseUrl

APPLICATION_NAME = "ledgerflow"
# A connection of its own, or one lent by a pool.
Connection = asyncpg.Connection | PoolConnectionProxy


def numbered(sql: str) -> str:
    """`?` placeholders as PostgreSQL's `$1, $2, ...`. Our statements hold no `?` in quoted
    literals; one that did would be refused here rather than silently renumbered."""
    parts = sql.split("?")
    if any(part.count("'") % 2 for part in parts[:-1]):
        raise ValueError(f"a '?' inside a quoted literal: {sql!r}")
    return "".join(f"{part}${i}" for i, part in enumerate(parts[:-1], 1)) + parts[-1]


def rowcount(status: str) -> int:
    """Rows changed, from a command tag such as `UPDATE 3` or `INSERT 0 1`."""
    last = status.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else 0


@contextmanager
def translated_errors() -> Iterator[None]:
    """asyncpg's constraint violations (keys, checks, triggers that raise them) as
    ConstraintError, and a missing privilege as PrivilegeError."""
    try:
        yield
    except asyncpg.IntegrityConstraintViolationError as exc:
        raise ConstraintError(str(exc)) from exc
    except asyncpg.InsufficientPrivilegeError as exc:
        raise PrivilegeError(str(exc)) from exc


async def create_pool(
    url: DatabaseUrl,
    *,
    synchronous: str = "FULL",
    readonly: bool = False,
    min_size: int = 1,
    max_size: int = 10,
) -> asyncpg.Pool:
    """A pool over `url`; a clear LedgerError when the server cannot be reached or refuses."""
    assert url.dsn is not None
    settings = {
        "application_name": APPLICATION_NAME,
        "synchronous_commit": "on" if synchronous == "FULL" else "off",
    }
    if url.schema is not None:
        settings["search_path"] = url.schema
    if readonly:
        settings["default_transaction_read_only"] = "on"
    try:
        return await asyncpg.create_pool(
            url.dsn, min_size=min_size, max_size=max_size, server_settings=settings
        )
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise LedgerError(f"cannot connect to PostgreSQL at {url}: {exc}") from None


TABLE_EXISTS = (
    "SELECT EXISTS (SELECT FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n "
    "ON n.oid = c.relnamespace WHERE n.nspname = current_schema() AND c.relname = $1)"
)


async def lock_for_ddl(connection: Connection, name: str) -> None:
    """Inside a transaction: wait for every other transaction holding the lock `name` (per
    schema), then see what they created. PostgreSQL reads catalog changes of other sessions
    when it locks a relation, not an advisory lock: the catalog read after the lock makes the
    tables another instance created meanwhile visible to this one's DDL."""
    await connection.execute(
        "SELECT pg_advisory_xact_lock(hashtext(current_schema() || ':' || $1))", name
    )
    await connection.execute("SELECT FROM pg_catalog.pg_class LIMIT 0")


async def ensure_schema(pool: asyncpg.Pool, url: DatabaseUrl) -> None:
    """Create the URL's schema if it does not exist yet (a role without CREATE on the database
    gets a message naming `ledgerflow db init`)."""
    if url.schema is None:
        return
    async with pool.acquire() as connection:
        if await connection.fetchval("SELECT to_regnamespace($1) IS NOT NULL", url.schema):
            return
        try:
            await connection.execute(f'CREATE SCHEMA IF NOT EXISTS "{url.schema}"')
        except asyncpg.UniqueViolationError:
            pass  # another process created it meanwhile
        except asyncpg.InsufficientPrivilegeError:
            raise LedgerError(
                f"schema {url.schema!r} does not exist in {url} and this role may not create "
                "it: run `ledgerflow db init` as the database owner first"
            ) from None


class PostgresExecutor:
    def __init__(self, connection: Connection, cache: dict[str, str]) -> None:
        self.connection = connection
        self._cache = cache

    def _sql(self, sql: str) -> str:
        translated = self._cache.get(sql)
        if translated is None:
            translated = self._cache[sql] = numbered(sql)
        return translated

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        with translated_errors():
            return [tuple(row) for row in await self.connection.fetch(self._sql(sql), *params)]

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        with translated_errors():
            row = await self.connection.fetchrow(self._sql(sql), *params)
        return None if row is None else tuple(row)

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        with translated_errors():
            return rowcount(await self.connection.execute(self._sql(sql), *params))


class PostgresDatabase:
    """`governance.storage.database.Database` over a pool the caller owns (and closes)."""

    dialect: Dialect = "postgresql"

    def __init__(self, pool: asyncpg.Pool, where: str, *, synchronous: str = "FULL") -> None:
        self.pool = pool
        self.where = where
        self.synchronous = synchronous  # as the pool was made (create_pool)
        self._cache: dict[str, str] = {}

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        async with self.pool.acquire() as connection:
            return await PostgresExecutor(connection, self._cache).fetch(sql, params)

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        async with self.pool.acquire() as connection:
            return await PostgresExecutor(connection, self._cache).fetchone(sql, params)

    async def lookup(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        return await self.fetchone(sql, params)  # no thread to spare a hand-off to

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        async with self.pool.acquire() as connection:
            return await PostgresExecutor(connection, self._cache).execute(sql, params)

    async def execute_riding(self, sql: str, params: Sequence[Any] = ()) -> int:
        return await self.execute(sql, params)  # flushed, as any other (Database docstring)

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[Executor]:
        async with self.pool.acquire() as connection:
            with translated_errors():
                async with connection.transaction():
                    yield PostgresExecutor(connection, self._cache)

    def transaction(self) -> AbstractAsyncContextManager[Executor]:
        return self._transaction()

    async def table_exists(self, name: str) -> bool:
        async with self.pool.acquire() as connection:
            return bool(await connection.fetchval(TABLE_EXISTS, name))

    async def columns(self, table: str) -> list[str]:
        rows = await self.fetch(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = "
            "current_schema() AND table_name = ? ORDER BY ordinal_position",
            (table,),
        )
        return [row[0] for row in rows]

    async def lock(self, executor: Executor, name: str) -> None:
        assert isinstance(executor, PostgresExecutor)
        await lock_for_ddl(executor.connection, name)
