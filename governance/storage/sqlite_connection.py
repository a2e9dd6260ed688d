"""A plain sqlite3 connection for async callers: each call runs on the connection's own thread,
or on the event loop's thread when nothing else is waiting to run there.

aiosqlite hands every statement to its thread and back (BEGIN, SELECT, INSERT, COMMIT: four
round trips per commit, each a wake-up of the event loop). Here a caller hands over a whole
function instead (`call`), so a commit with everything it checks and writes is one round trip.
Calls run one at a time, in order: one runs on the loop's thread (below) only when none is
queued for the connection's thread.

A round trip still costs two thread wake-ups (0.1-0.25 ms on a small VM, as much as the fsync
of a commit). When no other callback is ready in the event loop, nothing would use the time a
hand-off frees, so the call runs on the loop's own thread instead:

- without waiting for another process's write lock (`busy_timeout` 0 for that attempt): if
  SQLite reports the database busy, the function runs again on the connection's thread, which
  waits the configured time, so a function must leave nothing changed when it fails (one
  statement, or a transaction it rolls back);
- for at most `INLINE_BUDGET_SECONDS` of the loop's time in a row: calls made one after the
  other without the loop getting to run anything else (a scan paging through a ledger) go back
  to the thread once the budget is spent, so the loop keeps serving its other work.

A `brief` call (a read of one row by a unique key, tens of microseconds) runs on the loop's
thread even when other callbacks are ready: the hand-off would cost more of the loop's time
than the read (a bearer token's lookup on every HTTP request, which often arrives while the
previous request's callbacks are still queued). It still never runs beside a queued call, and
still goes to the thread, waiting, when SQLite reports the database busy.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from governance.storage.database import ConstraintError, Row

T = TypeVar("T")

INLINE_BUDGET_SECONDS = 0.002


class SqliteConnection:
    """One sqlite3 connection in autocommit mode (see the module docstring)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        busy_timeout_ms: int,
        uri: bool = False,
        name: str = "sqlite",
    ) -> None:
        self._path = os.fspath(path)
        self._uri = uri
        self._busy_timeout_ms = int(busy_timeout_ms)
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._connection: sqlite3.Connection | None = None
        self._queued = 0  # calls handed to the thread and not finished: never run one beside
        self._count_lock = threading.Lock()
        # The busy_timeout the connection has now (None: unknown, after a PRAGMA statement):
        # set only when a call needs the other one, not twice per inline call.
        self._timeout_now: int | None = None

    async def open(self) -> None:
        def connect() -> sqlite3.Connection:
            connection = sqlite3.connect(
                self._path, isolation_level=None, check_same_thread=False, uri=self._uri
            )
            connection.execute(f"PRAGMA busy_timeout={self._busy_timeout_ms}")
            self._timeout_now = self._busy_timeout_ms
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
    def is_open(self) -> bool:
        return self._connection is not None

    @property
    def in_transaction(self) -> bool:
        """Whether a transaction is open (read between calls, when nothing runs on it)."""
        return self._connection is not None and self._connection.in_transaction

    async def _run(self, fn: Callable[[], T]) -> T:
        # Counted down by the thread when it is done, not by the caller: a cancelled caller
        # stops waiting, but the thread still runs the function.
        with self._count_lock:
            self._queued += 1

        def counted() -> T:
            try:
                return fn()
            finally:
                with self._count_lock:
                    self._queued -= 1

        return await asyncio.get_running_loop().run_in_executor(self._thread, counted)

    async def call(self, fn: Callable[[sqlite3.Connection], T], *, brief: bool = False) -> T:
        """`fn(connection)`: one round trip however much it does (or none: module docstring).
        `brief`: `fn` is a short read, run on the loop's thread even when other work is ready."""
        connection = self._connection
        if connection is None:
            raise sqlite3.ProgrammingError(f"the connection to {self._path} is closed")
        if not self._queued and (brief or _may_run_inline()):
            try:
                return self._without_waiting(connection, fn)
            except _Busy:
                pass
        return await self._run(lambda: self._waiting(connection, fn))

    def _without_waiting(
        self, connection: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T]
    ) -> T:
        self._wait_at_most(connection, 0)
        try:
            return fn(connection)
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY:
                raise _Busy from exc
            raise

    def _waiting(self, connection: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T]) -> T:
        self._wait_at_most(connection, self._busy_timeout_ms)
        return fn(connection)

    def _wait_at_most(self, connection: sqlite3.Connection, ms: int) -> None:
        # Calls run one at a time (module docstring), so this state is the connection's.
        if self._timeout_now != ms:
            connection.execute(f"PRAGMA busy_timeout={ms}")
            self._timeout_now = ms

    # An `Executor` too, a statement a call.

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        try:
            return await self.call(lambda connection: connection.execute(sql, params).rowcount)
        except sqlite3.IntegrityError as exc:
            raise ConstraintError(str(exc)) from exc
        finally:
            if sql.lstrip()[:6].upper() == "PRAGMA":
                self._timeout_now = None  # it may have set busy_timeout

    async def fetch(
        self, sql: str, params: Sequence[Any] = (), *, brief: bool = False
    ) -> list[Row]:
        try:
            return await self.call(
                lambda connection: [tuple(row) for row in connection.execute(sql, params)],
                brief=brief,
            )
        except sqlite3.IntegrityError as exc:  # a write with RETURNING
            raise ConstraintError(str(exc)) from exc

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        rows = await self.fetch(sql, params)
        return rows[0] if rows else None


class _Busy(Exception):
    """Another connection holds SQLite's write lock: try again, waiting, on the thread."""


class _Streak(threading.local):
    """Per thread (each event loop its own): since when calls run inline, and the callback
    that ends the streak once the loop runs something else."""

    loop: asyncio.AbstractEventLoop | None = None
    started = 0.0
    marker: asyncio.Handle | None = None


_streak = _Streak()


def _end_streak() -> None:
    _streak.loop = _streak.marker = None


def _may_run_inline() -> bool:
    """Whether a call may run on this thread now: nothing else is ready in the loop (its
    `_ready` queue, read from CPython's loop; a loop without one, like uvloop's, never is),
    and the current streak of inline calls is within its budget."""
    loop = asyncio.get_running_loop()
    ready = getattr(loop, "_ready", None)
    if ready is None:
        return False
    if _streak.loop is loop and len(ready) == 1 and ready[0] is _streak.marker:
        return time.perf_counter() - _streak.started < INLINE_BUDGET_SECONDS
    if ready:
        return False
    _streak.loop, _streak.started = loop, time.perf_counter()
    _streak.marker = loop.call_soon(_end_streak)
    return True


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
