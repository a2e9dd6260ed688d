"""Operational state of runs: which are RUNNING, SUSPENDED (with their cursor and timer) or done.

These rows are not evidence (the envelopes are); they are the index that makes resume, recovery
and timers cheap, and they change: a resume is the compare-and-set SUSPENDED -> RUNNING on one
row, which SQLite serialises across connections and processes, so exactly one caller wins.
Stored in the ledger's database file, in tables of their own, through a connection of their own.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from governance.errors import LedgerError
from governance.operational import OperationalTables

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


class RunStore(OperationalTables):
    SCHEMA = _SCHEMA
    VERSION_TABLE = "lf_runs_schema"
    VERSION = RUNS_SCHEMA_VERSION
    WHAT = "run tables"

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

    async def page(
        self,
        *,
        status: str | None = None,
        program: str | None = None,
        since: float | None = None,
        until: float | None = None,
        after: tuple[float, str] | None = None,
        limit: int = 50,
    ) -> list[tuple[str, str, str, str, float, float, str | None]]:
        """Runs newest first, as (trace id, program name, program hash, status, started_at,
        updated_at, error). Keyset pagination on (started_at, trace_id): `after` is the last
        row of the previous page, so pages stay stable while runs are added."""
        where: list[str] = ["1 = 1"]
        params: list[Any] = []
        if status is not None:
            where.append("r.status = ?")
            params.append(status)
        if program is not None:
            where.append("(p.name = ? OR r.program_hash = ?)")
            params += [program, program]
        if since is not None:
            where.append("r.started_at >= ?")
            params.append(since)
        if until is not None:
            where.append("r.started_at < ?")
            params.append(until)
        if after is not None:
            where.append("(r.started_at < ? OR (r.started_at = ? AND r.trace_id < ?))")
            params += [after[0], after[0], after[1]]
        query = (
            "SELECT r.trace_id, p.name, r.program_hash, r.status, r.started_at, r.updated_at, "
            "r.error FROM lf_runs r JOIN lf_programs p ON p.hash = r.program_hash "
            f"WHERE {' AND '.join(where)} ORDER BY r.started_at DESC, r.trace_id DESC LIMIT ?"
        )
        return [tuple(row) for row in await self._read(query, (*params, limit))]

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
