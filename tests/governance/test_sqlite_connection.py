"""SqliteConnection: calls run inline only when the loop is idle (brief ones even when it is
not), never beside each other, and a call that meets another process's write lock waits for it
instead of failing; a riding write of SqliteDatabase runs unflushed and only it."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from governance.storage.database import ConstraintError, SqliteDatabase
from governance.storage.sqlite_connection import INLINE_BUDGET_SECONDS, SqliteConnection

# About 0.1-1 ms of work per call, so a few dozen calls exceed the inline budget.
HEAVY = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3000) " + (
    "SELECT sum(i) FROM n"
)


async def opened(path: Path, busy_timeout_ms: int = 5000) -> SqliteConnection:
    connection = SqliteConnection(path, busy_timeout_ms=busy_timeout_ms)
    await connection.open()
    await connection.execute("PRAGMA journal_mode=WAL")
    await connection.execute("CREATE TABLE IF NOT EXISTS t (x INTEGER)")
    return connection


def on_main_thread(_: sqlite3.Connection) -> bool:
    return threading.current_thread() is threading.main_thread()


async def test_a_call_runs_inline_only_while_nothing_else_is_ready(tmp_path: Path) -> None:
    connection = await opened(tmp_path / "db.sqlite")
    try:
        await asyncio.sleep(0.01)  # the loop drains what opening scheduled
        assert await connection.call(on_main_thread) is True
        asyncio.get_running_loop().call_soon(lambda: None)  # something else is ready now
        assert await connection.call(on_main_thread) is False
    finally:
        await connection.close()


async def test_a_brief_call_runs_inline_even_with_other_work_ready_but_never_beside_a_queued_one(
    tmp_path: Path,
) -> None:
    connection = await opened(tmp_path / "db.sqlite")
    started, release = threading.Event(), threading.Event()

    def blocking(_: sqlite3.Connection) -> None:
        started.set()
        release.wait(5)

    try:
        await asyncio.sleep(0.01)
        asyncio.get_running_loop().call_soon(lambda: None)  # something else is ready
        assert await connection.call(on_main_thread, brief=True) is True
        asyncio.get_running_loop().call_soon(lambda: None)
        queued = asyncio.ensure_future(connection.call(blocking))  # goes to the thread
        await asyncio.sleep(0)
        assert await asyncio.to_thread(started.wait, 5)
        brief = asyncio.ensure_future(connection.call(on_main_thread, brief=True))
        await asyncio.sleep(0.01)
        assert not brief.done()  # waits its turn behind the queued call, on the thread
        release.set()
        await queued
        assert await brief is False
    finally:
        release.set()
        await connection.close()


async def test_a_lookup_reads_one_row_or_none(tmp_path: Path) -> None:
    database = SqliteDatabase(tmp_path / "db.sqlite")
    await database.open()
    try:
        await database.execute("CREATE TABLE k (key TEXT PRIMARY KEY, value INTEGER)")
        await database.execute("INSERT INTO k VALUES ('a', 1), ('b', 2)")
        await asyncio.sleep(0.01)
        asyncio.get_running_loop().call_soon(lambda: None)
        assert await database.lookup("SELECT key, value FROM k WHERE key = ?", ("b",)) == ("b", 2)
        assert await database.lookup("SELECT key, value FROM k WHERE key = ?", ("z",)) is None
    finally:
        await database.close()


async def test_a_long_streak_of_calls_lets_the_loop_run_its_other_work(tmp_path: Path) -> None:
    connection = await opened(tmp_path / "db.sqlite")
    calls = 0
    timer_fired_after: list[int] = []

    def heavy(db: sqlite3.Connection) -> bool:
        db.execute(HEAVY).fetchone()
        return threading.current_thread() is threading.main_thread()

    try:
        await asyncio.sleep(0.01)
        # A timer runs only when the loop gets control back: never, if every call ran inline.
        asyncio.get_running_loop().call_later(0.001, lambda: timer_fired_after.append(calls))
        inline: list[bool] = []
        start = time.perf_counter()
        while time.perf_counter() - start < 20 * INLINE_BUDGET_SECONDS:
            inline.append(await connection.call(heavy))
            calls += 1
        assert inline[0] is True
        assert timer_fired_after, "the loop never ran its timer during the streak of calls"
        assert timer_fired_after[0] < calls
    finally:
        await connection.close()


async def test_calls_never_overlap(tmp_path: Path) -> None:
    connection = await opened(tmp_path / "db.sqlite")
    inside = 0
    overlaps = 0
    guard = threading.Lock()

    def tracked(db: sqlite3.Connection) -> None:
        nonlocal inside, overlaps
        with guard:
            inside += 1
            overlaps += inside > 1
        db.execute(HEAVY).fetchone()
        with guard:
            inside -= 1

    async def many(_: int) -> None:
        for _ in range(10):
            await connection.call(tracked)

    try:
        await asyncio.gather(*(many(i) for i in range(20)))
        assert overlaps == 0
    finally:
        await connection.close()


async def test_a_write_meeting_another_writer_waits_for_it(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    connection = await opened(path, busy_timeout_ms=10_000)
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")  # another process's write transaction
    other.execute("INSERT INTO t VALUES (1)")
    release = threading.Timer(0.3, lambda: other.execute("COMMIT"))
    try:
        await asyncio.sleep(0)
        release.start()
        # Idle loop: tried inline without waiting, busy, then on the thread, which waits.
        assert await connection.execute("INSERT INTO t VALUES (2)") == 1
        assert await connection.fetch("SELECT x FROM t ORDER BY x") == [(1,), (2,)]
    finally:
        release.join()
        other.close()
        await connection.close()


async def test_a_riding_write_runs_unflushed_and_leaves_the_connection_at_full(
    tmp_path: Path,
) -> None:
    database = SqliteDatabase(tmp_path / "db.sqlite", synchronous="FULL")
    await database.open()
    levels: list[int] = []
    try:
        await database.execute("CREATE TABLE t (x INTEGER PRIMARY KEY)")
        # What the connection runs each statement at, seen from inside the statement.
        await database.connection.call(
            lambda db: db.create_function(
                "level", 0, lambda: levels.append(db.execute("PRAGMA synchronous").fetchone()[0])
            )
        )
        assert await database.execute_riding("INSERT INTO t SELECT 1 WHERE level() IS NULL") == 1
        assert await database.execute("INSERT INTO t SELECT 2 WHERE level() IS NULL") == 1
        assert levels == [1, 2]  # NORMAL for the riding write only
        with pytest.raises(ConstraintError):
            await database.execute_riding("INSERT INTO t VALUES (1)")
        assert await database.fetch("PRAGMA synchronous") == [(2,)]
        assert await database.fetch("SELECT x FROM t ORDER BY x") == [(1,), (2,)]
    finally:
        await database.close()
