"""The SQLite ledger's writing connection: a plain sqlite3 connection owned by one thread.

aiosqlite hands every statement to its thread and back (BEGIN, SELECT, INSERT, COMMIT: four
round trips per commit, each a wake-up of the event loop). Here a caller hands the thread a
whole function instead, so a commit with everything it checks and writes is one round trip.
The thread is the connection's only user: its statements never interleave.
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

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._path = os.fspath(path)
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger-writer")
        self._connection: sqlite3.Connection | None = None

    async def open(self) -> None:
        def connect() -> sqlite3.Connection:
            return sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)

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

    async def call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """`fn(connection)` on the writer's thread: one round trip however much it does."""
        connection = self._connection
        if connection is None:
            raise sqlite3.ProgrammingError("the ledger's writing connection is closed")
        return await self._run(lambda: fn(connection))

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
