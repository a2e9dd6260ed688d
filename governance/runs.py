"""Operational state of runs: which are RUNNING, SUSPENDED (with their cursor and timer) or done.

These rows are not evidence (the envelopes are); they are the index that makes resume, recovery
and timers cheap, and they change: a resume is the compare-and-set SUSPENDED -> RUNNING on one
row, which SQLite serialises across connections and processes, so exactly one caller wins.
Stored in the ledger's database file, in tables of their own, through a connection of their own.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiosqlite

from governance.errors import LedgerError

RUNS_SCHEMA_VERSION = 1

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS lf_runs_schema (version INTEGER NOT NULL) STRICT""",
    """CREATE TABLE IF NOT EXISTS lf_programs (
        hash TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        body TEXT NOT NULL
    ) STRICT""",
    """CREATE TABLE IF NOT EXISTS lf_runs (
        trace_id TEXT PRIMARY KEY,
        program_hash TEXT NOT NULL REFERENCES lf_programs(hash),
        status TEXT NOT NULL,
        started_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        context TEXT NOT NULL,
        initial_hash TEXT NOT NULL,
        suspended_step TEXT,
        cursor TEXT,
        wake_at REAL,
        error TEXT
    ) STRICT""",
    "CREATE INDEX IF NOT EXISTS lf_runs_status ON lf_runs(status, wake_at)",
    """CREATE TABLE IF NOT EXISTS lf_run_keys (
        key TEXT PRIMARY KEY,
        fingerprint TEXT NOT NULL,
        trace_id TEXT NOT NULL,
        created_at REAL NOT NULL
    ) STRICT""",
    """CREATE TABLE IF NOT EXISTS lf_events (
        trace_id TEXT NOT NULL,
        event_id TEXT NOT NULL,
        received_at REAL NOT NULL,
        PRIMARY KEY (trace_id, event_id)
    ) STRICT""",
)


@dataclass(frozen=True, slots=True)
class RunRow:
    trace_id: str
    program_hash: str
    program_name: str
    status: str
    started_at: float
    context: dict[str, Any]
    initial_hash: str
    suspended_step: str | None
    cursor: str | None
    wake_at: float | None
    error: str | None


class RunStore:
    def __init__(self, path: str | os.PathLike[str], *, synchronous: str = "FULL") -> None:
        self.path = os.fspath(path)
        self.synchronous = synchronous
        self._db: aiosqlite.Connection | None = None
        # One connection serves every run of this process: writes must not interleave, or one
        # run's statements would land inside another's open transaction.
        self._lock = asyncio.Lock()

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """BEGIN IMMEDIATE ... COMMIT under the lock; ROLLBACK on any failure."""
        async with self._lock:
            db = self.db
            await db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                await db.execute("ROLLBACK")
                raise
            await db.execute("COMMIT")

    async def _read(self, sql: str, params: tuple[Any, ...]) -> list[Any]:
        """All rows of one query, under the lock: a half-read statement keeps a read
        transaction open, and another caller's write on this connection would then have to
        upgrade it, which SQLite refuses ("database is locked") when another writer moved on."""
        async with self._lock, self.db.execute(sql, params) as cursor:
            return list(await cursor.fetchall())

    async def _write(self, sql: str, params: tuple[Any, ...]) -> int:
        """One autocommitted statement under the lock; returns the rows it changed."""
        async with self._lock:
            cursor = await self.db.execute(sql, params)
            return cursor.rowcount

    async def open(self) -> None:
        db = await aiosqlite.connect(self.path, isolation_level=None)
        await db.execute("PRAGMA busy_timeout = 10000")
        await db.execute(f"PRAGMA synchronous = {self.synchronous}")
        await db.execute("BEGIN IMMEDIATE")
        for statement in _SCHEMA:
            await db.execute(statement)
        async with db.execute("SELECT max(version) FROM lf_runs_schema") as cursor:
            row = await cursor.fetchone()
        version = row[0] if row else None
        if version is None:
            await db.execute("INSERT INTO lf_runs_schema VALUES (?)", (RUNS_SCHEMA_VERSION,))
        elif version > RUNS_SCHEMA_VERSION:
            await db.execute("ROLLBACK")
            await db.close()
            raise LedgerError(
                f"{self.path}: run tables are version {version}, this ledgerflow reads up to "
                f"{RUNS_SCHEMA_VERSION}; upgrade ledgerflow"
            )
        await db.execute("COMMIT")
        self._db = db

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise LedgerError("run store is not open")
        return self._db

    async def started(
        self,
        trace_id: str,
        program_hash: str,
        name: str,
        body: dict[str, Any],
        started_at: float,
        context: dict[str, Any],
        initial_hash: str,
    ) -> None:
        async with self._transaction() as db:
            await db.execute(
                "INSERT OR IGNORE INTO lf_programs VALUES (?, ?, ?)",
                (program_hash, name, json.dumps(body, sort_keys=True)),
            )
            await db.execute(
                "INSERT INTO lf_runs (trace_id, program_hash, status, started_at, updated_at, "
                "context, initial_hash) VALUES (?, ?, 'RUNNING', ?, ?, ?, ?)",
                (trace_id, program_hash, started_at, started_at, json.dumps(context), initial_hash),
            )

    async def set_status(
        self,
        trace_id: str,
        status: str,
        now: float,
        *,
        suspended_step: str | None = None,
        cursor: str | None = None,
        wake_at: float | None = None,
        error: str | None = None,
    ) -> None:
        await self._write(
            "UPDATE lf_runs SET status = ?, updated_at = ?, suspended_step = ?, cursor = ?, "
            "wake_at = ?, error = ? WHERE trace_id = ?",
            (status, now, suspended_step, cursor, wake_at, error, trace_id),
        )

    async def claim(self, trace_id: str, now: float) -> bool:
        """The compare-and-set SUSPENDED -> RUNNING: True for exactly one caller."""
        changed = await self._write(
            "UPDATE lf_runs SET status = 'RUNNING', updated_at = ? "
            "WHERE trace_id = ? AND status = 'SUSPENDED'",
            (now, trace_id),
        )
        return changed == 1

    async def claim_key(
        self, key: str, fingerprint: str, trace_id: str, now: float, retention: float
    ) -> tuple[str, str] | None:
        """Bind `key` to `trace_id` unless a live binding exists (then return it)."""
        async with self._transaction() as db:
            await db.execute(
                "DELETE FROM lf_run_keys WHERE key = ? AND created_at <= ?", (key, now - retention)
            )
            async with db.execute(
                "SELECT trace_id, fingerprint FROM lf_run_keys WHERE key = ?", (key,)
            ) as cursor:
                row = await cursor.fetchone()
            if row is None:
                await db.execute(
                    "INSERT INTO lf_run_keys VALUES (?, ?, ?, ?)", (key, fingerprint, trace_id, now)
                )
        return None if row is None else (row[0], row[1])

    async def event_seen(self, trace_id: str, event_id: str) -> bool:
        rows = await self._read(
            "SELECT 1 FROM lf_events WHERE trace_id = ? AND event_id = ?", (trace_id, event_id)
        )
        return bool(rows)

    async def remember_event(self, trace_id: str, event_id: str, now: float) -> None:
        await self._write(
            "INSERT OR IGNORE INTO lf_events VALUES (?, ?, ?)", (trace_id, event_id, now)
        )

    async def prune(self, before: float) -> int:
        """Delete finished runs' operational rows (run index, events) last updated before
        `before`, and expired idempotency keys. Envelopes are never touched."""
        finished = "status NOT IN ('RUNNING', 'SUSPENDED')"
        async with self._transaction() as db:
            await db.execute(
                "DELETE FROM lf_events WHERE trace_id IN "
                f"(SELECT trace_id FROM lf_runs WHERE {finished} AND updated_at < ?)",
                (before,),
            )
            cursor = await db.execute(
                f"DELETE FROM lf_runs WHERE {finished} AND updated_at < ?", (before,)
            )
            removed = cursor.rowcount
            await db.execute("DELETE FROM lf_run_keys WHERE created_at < ?", (before,))
        return removed

    async def get(self, trace_id: str) -> RunRow | None:
        rows = await self._select("WHERE r.trace_id = ?", (trace_id,))
        return rows[0] if rows else None

    async def with_status(self, status: str) -> list[RunRow]:
        return await self._select("WHERE r.status = ? ORDER BY r.started_at", (status,))

    async def due(self, now: float) -> list[str]:
        rows = await self._read(
            "SELECT trace_id FROM lf_runs WHERE status = 'SUSPENDED' AND wake_at <= ? "
            "ORDER BY wake_at",
            (now,),
        )
        return [row[0] for row in rows]

    async def program(self, program_hash: str) -> dict[str, Any]:
        rows = await self._read("SELECT body FROM lf_programs WHERE hash = ?", (program_hash,))
        row = rows[0] if rows else None
        if row is None:
            raise LedgerError(f"no program with hash {program_hash} in {self.path}")
        body: dict[str, Any] = json.loads(row[0])
        return body

    async def _select(self, where: str, params: tuple[Any, ...]) -> list[RunRow]:
        query = (
            "SELECT r.trace_id, r.program_hash, p.name, r.status, r.started_at, r.context, "
            "r.initial_hash, r.suspended_step, r.cursor, r.wake_at, r.error "
            f"FROM lf_runs r JOIN lf_programs p ON p.hash = r.program_hash {where}"
        )
        rows = await self._read(query, params)
        return [
            RunRow(r[0], r[1], r[2], r[3], r[4], json.loads(r[5]), r[6], r[7], r[8], r[9], r[10])
            for r in rows
        ]
