"""The SQLite ledger's writing connection: a plain sqlite3 connection owned by one thread.

aiosqlite hands every statement to its thread and back (BEGIN, SELECT, INSERT, COMMIT: four
round trips per commit, each a wake-up of the event loop). Here a caller hands the thread a
whole function instead, so a commit with everything it checks and writes is one round trip.
The thread is the connection's only user while it runs something: callers serialise their use
(the store's write lock), so statements never interleave.

A hand-off costs two thread wake-ups (about 0.1-0.25 ms on a small VM, as much as the fsync of
a commit). When nothing else in the event loop is ready to run, nothing would use the time the
hand-off frees, so `call(..., inline_when_idle=True)` runs the function on the loop's own thread
instead, without waiting for another process's write lock (`busy_timeout` 0 for that attempt):
if SQLite reports the database busy, the function runs again on the writer's thread, which
waits the configured time. Functions passed so must therefore leave nothing changed when they
fail (a transaction they roll back).
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from governance.storage.database import ConstraintError, Row

T = TypeVar("T")


class SqliteWriter:
    """One sqlite3 connection in autocommit mode, used only from its own thread."""

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout_ms: int) -> None:
        self._path = os.fspath(path)
        self._busy_timeout_ms = int(busy_timeout_ms)
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger-writer")
        self._connection: sqlite3.Connection | None = None

    async def open(self) -> None:
        def connect() -> sqlite3.Connection:
            connection = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
            connection.execute(f"PRAGMA busy_timeout={self._busy_timeout_ms}")
            return connection

        self._connection = await self._run(connect)

    async def close(self) -> None:
        connection, self._connection = self._connection, None
        try:
            if connection is not None:
                await self._run(connection.close)
        finally:
            self._thread.shutdown(wait=False)

    @property
    def in_transaction(self) -> bool:
        """Whether a transaction is open (read between round trips, when the thread is idle)."""
        return self._connection is not None and self._connection.in_transaction

    async def _run(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn)

    async def call(
        self, fn: Callable[[sqlite3.Connection], T], *, inline_when_idle: bool = False
    ) -> T:
        """`fn(connection)` on the writer's thread: one round trip however much it does (or,
        with `inline_when_idle`, on this thread when nothing else is ready: module docstring)."""
        connection = self._connection
        if connection is None:
            raise sqlite3.ProgrammingError("the ledger's writing connection is closed")
        if inline_when_idle and _nothing_else_ready():
            try:
                return self._without_waiting(connection, fn)
            except _Busy:
                pass
        return await self._run(lambda: fn(connection))

    def _without_waiting(
        self, connection: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T]
    ) -> T:
        connection.execute("PRAGMA busy_timeout=0")
        try:
            return fn(connection)
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY:
                raise _Busy from exc
            raise
        finally:
            connection.execute(f"PRAGMA busy_timeout={self._busy_timeout_ms}")

    # An `Executor` too, a statement a round trip (for migrations and other rare transactions;
    # commits hand over a whole function with `call`).

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        try:
            return await self.call(lambda connection: connection.execute(sql, params).rowcount)
        except sqlite3.IntegrityError as exc:
            raise ConstraintError(str(exc)) from exc

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        try:
            return await self.call(
                lambda connection: [tuple(row) for row in connection.execute(sql, params)]
            )
        except sqlite3.IntegrityError as exc:
            raise ConstraintError(str(exc)) from exc

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        rows = await self.fetch(sql, params)
        return rows[0] if rows else None


class _Busy(Exception):
    """Another connection holds SQLite's write lock: try again, waiting, on the thread."""


def _nothing_else_ready() -> bool:
    """Whether no other callback waits to run in this event loop. Read from CPython's loop
    (`_ready`); a loop without it (uvloop) is never taken for idle."""
    ready = getattr(asyncio.get_running_loop(), "_ready", None)
    return ready is not None and not ready


def in_one_transaction(
    statements: Sequence[tuple[str, Sequence[Any]]],
) -> Callable[[sqlite3.Connection], None]:
    """A function running `statements` in one BEGIN IMMEDIATE ... COMMIT, all or none."""

    def run(connection: sqlite3.Connection) -> None:
        connection.execute("BEGIN IMMEDIATE")
        try:
            for sql, params in statements:
                connection.execute(sql, params)
            connection.execute("COMMIT")
        except BaseException:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise

    return run
