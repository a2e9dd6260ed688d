"""The SQL database under the operational tables (run index, saved programs, tokens): one small
interface over SQLite (`sqlite_connection`) and PostgreSQL (asyncpg).

Statements are written once, with `?` placeholders and SQL both dialects read; PostgreSQL gets
them with `$1, $2, ...` (translated once per statement text and cached). Table definitions are
written once in SQLite's STRICT form; `ddl` maps them to PostgreSQL (`REAL` -> `DOUBLE
PRECISION`, `INTEGER` -> `BIGINT`, `BLOB` -> `BYTEA`, no `STRICT`). Where the dialects differ
in more than spelling (row locks, `SKIP LOCKED`), a caller asks `db.dialect`.

SQLite (here): one connection per `SqliteDatabase`, every use under one lock, because an open
transaction (or a half-read statement) spans awaits; a transaction is `BEGIN IMMEDIATE`, so it
holds SQLite's write lock from its first statement and never has to upgrade a read lock.
PostgreSQL (`postgres_database`, imported only when used): a connection pool shared by the
whole process. Both raise `ConstraintError` when a constraint refuses a write, so callers need
not know the driver.
"""

from __future__ import annotations

import asyncio
import os
import re
import sqlite3
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any, Literal, Protocol

from governance.errors import LedgerError

if TYPE_CHECKING:  # sqlite_connection imports this module's errors
    from governance.storage.sqlite_connection import SqliteConnection

Dialect = Literal["sqlite", "postgresql"]
Row = tuple[Any, ...]

_PG_TYPES = (
    (re.compile(r"\bREAL\b"), "DOUBLE PRECISION"),
    (re.compile(r"\bINTEGER\b"), "BIGINT"),
    (re.compile(r"\bBLOB\b"), "BYTEA"),
    (re.compile(r"\)\s*STRICT\s*$"), ")"),
)


class ConstraintError(LedgerError):
    """A write was refused by a constraint (unique key, check, foreign key, trigger)."""


class PrivilegeError(LedgerError):
    """The database role may not do this (PostgreSQL: a missing GRANT)."""


def ddl(statement: str, dialect: Dialect) -> str:
    """A table definition written in SQLite's STRICT form, for `dialect`."""
    if dialect == "sqlite":
        return statement
    for pattern, replacement in _PG_TYPES:
        statement = pattern.sub(replacement, statement)
    return statement


class Executor(Protocol):
    """Runs statements: on its own (each in its own transaction) or inside a transaction."""

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Row]: ...

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None: ...

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement; the number of rows it changed."""
        ...


class Database(Executor, Protocol):
    dialect: Dialect
    where: str  # for messages: a file path, or a database without its password
    synchronous: str  # FULL or NORMAL: when a commit is durable (see the stores)

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def lookup(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        """`fetchone`, for a read of one row by a unique key, shorter than a hand-off to
        another thread: SQLite runs it on the event loop's thread even when other callbacks
        are waiting (governance.storage.sqlite_connection); PostgreSQL as any other."""
        ...

    async def execute_riding(self, sql: str, params: Sequence[Any] = ()) -> int:
        """`execute`, for a write whose commit needs no flush of its own: the caller makes a
        durable commit to the same database before anything acts on it, and that commit makes
        this one durable too (SQLite's WAL and PostgreSQL's WAL are written in order). SQLite
        at FULL runs it at NORMAL; PostgreSQL flushes it as any other."""
        ...

    def transaction(self) -> AbstractAsyncContextManager[Executor]:
        """All statements of the block in one transaction: committed at its end, rolled back
        if it raises. On SQLite it holds the write lock from the start."""
        ...

    async def table_exists(self, name: str) -> bool: ...

    async def columns(self, table: str) -> list[str]:
        """The table's column names, in their order."""
        ...

    async def lock(self, executor: Executor, name: str) -> None:
        """Inside a transaction: serialise it with every other transaction locking `name`
        (PostgreSQL: an advisory lock; SQLite's write lock already does it)."""
        ...


# --- SQLite ---------------------------------------------------------------------------------


class SqliteDatabase:
    """One connection to the file at `path` (`SqliteConnection`), serialised by a lock."""

    dialect: Dialect = "sqlite"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        synchronous: str = "FULL",
        busy_timeout_ms: int = 10000,
    ) -> None:
        self.path = os.fspath(path)
        self.where = self.path
        self.synchronous = synchronous
        self.busy_timeout_ms = busy_timeout_ms
        self._connection: SqliteConnection | None = None
        self._lock = asyncio.Lock()

    async def open(self) -> None:
        if self._connection is not None:
            return
        from governance.storage.sqlite_connection import SqliteConnection

        connection = SqliteConnection(
            self.path, busy_timeout_ms=self.busy_timeout_ms, name="sqlite-tables"
        )
        await connection.open()
        try:
            await connection.execute(f"PRAGMA synchronous = {self.synchronous}")
        except BaseException:
            await connection.close()
            raise
        self._connection = connection

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.close()
            self._connection = None

    @property
    def connection(self) -> SqliteConnection:
        if self._connection is None:
            raise LedgerError(f"database {self.path} is not open")
        return self._connection

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        async with self._lock:  # not inside another caller's open transaction
            return await self.connection.fetch(sql, params)

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        rows = await self.fetch(sql, params)
        return rows[0] if rows else None

    async def lookup(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        async with self._lock:
            rows = await self.connection.fetch(sql, params, brief=True)
        return rows[0] if rows else None

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        async with self._lock:
            return await self.connection.execute(sql, params)

    async def execute_riding(self, sql: str, params: Sequence[Any] = ()) -> int:
        if self.synchronous == "NORMAL":
            return await self.execute(sql, params)

        # One call, so that no other statement runs on the connection at NORMAL.
        def unflushed(connection: sqlite3.Connection) -> int:
            connection.execute("PRAGMA synchronous = NORMAL")
            try:
                return connection.execute(sql, params).rowcount
            finally:
                connection.execute(f"PRAGMA synchronous = {self.synchronous}")

        async with self._lock:
            try:
                return await self.connection.call(unflushed)
            except sqlite3.IntegrityError as exc:
                raise ConstraintError(str(exc)) from exc

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[Executor]:
        async with self._lock:
            connection = self.connection
            await connection.execute("BEGIN IMMEDIATE")
            try:
                yield connection
            except BaseException:
                await connection.execute("ROLLBACK")
                raise
            try:
                await connection.execute("COMMIT")
            except ConstraintError:  # a deferred constraint
                await connection.execute("ROLLBACK")
                raise

    def transaction(self) -> AbstractAsyncContextManager[Executor]:
        return self._transaction()

    async def table_exists(self, name: str) -> bool:
        row = await self.fetchone(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)
        )
        return row is not None

    async def columns(self, table: str) -> list[str]:
        rows = await self.fetch("SELECT name FROM pragma_table_info(?) ORDER BY cid", (table,))
        return [row[0] for row in rows]

    async def lock(self, executor: Executor, name: str) -> None:
        return None  # BEGIN IMMEDIATE holds the database's one write lock
