"""Operational state of runs: which are RUNNING, SUSPENDED (with their cursor and timer) or done.

These rows are not evidence (the envelopes are); they are the index that makes resume, recovery
and timers cheap, and they change: a resume is the compare-and-set SUSPENDED -> RUNNING on one
row, which the database serialises across connections, processes and hosts, so exactly one
caller wins. Stored in the ledger's database, in tables of their own.

Leases (used when several instances share a PostgreSQL database): a RUNNING run names its
`owner` (an instance id) and `lease_expires_at`; the owner renews its leases while it runs
them, and another instance takes over a run only once its lease expired. A SUSPENDED run may
carry a short lease too, while an instance fires its due timer. Without leases (SQLite, one
machine) both columns stay NULL and recovery relies on the workspace's file lock instead.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from governance.errors import LedgerError
from governance.storage.ledger_port import Statement
from governance.storage.operational_tables import OperationalTables

_V1 = (
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
# Leases: the instance executing a RUNNING run (or holding a due timer) and until when.
_V2 = (
    "ALTER TABLE lf_runs ADD COLUMN owner TEXT",
    "ALTER TABLE lf_runs ADD COLUMN lease_expires_at REAL",
    "CREATE INDEX IF NOT EXISTS lf_runs_owner ON lf_runs(owner)",
)
# A cancel asked through one instance of a run another instance executes (the reason).
_V3 = ("ALTER TABLE lf_runs ADD COLUMN cancel_requested TEXT",)
# A run holds its program's hash, so its program row must exist first.
RUN_TABLES = ("lf_programs", "lf_runs", "lf_run_keys", "lf_events")
_TAKE_BATCH = 100


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
    MIGRATIONS = ((1, _V1), (2, _V2), (3, _V3))
    VERSION_TABLE = "lf_runs_schema"
    TABLES = RUN_TABLES
    WHAT = "run tables"

    async def write(self, statements: list[Statement]) -> None:
        """Run `statements` (from the `..._statements` builders) in one transaction."""
        if len(statements) == 1:
            await self.db.execute(*statements[0])
            return
        async with self.db.transaction() as tx:
            for sql, params in statements:
                await tx.execute(sql, params)

    @staticmethod
    def started_statements(
        trace_id: str,
        program_hash: str,
        name: str,
        body: dict[str, Any],
        started_at: float,
        context: dict[str, Any],
        initial_hash: str,
        *,
        owner: str | None = None,
        lease_until: float | None = None,
    ) -> list[Statement]:
        """A new run's rows (its program, its index row), for `write` or for the commit of the
        run's first envelope."""
        return [
            (
                "INSERT INTO lf_programs VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                (program_hash, name, json.dumps(body, sort_keys=True)),
            ),
            (
                "INSERT INTO lf_runs (trace_id, program_hash, status, started_at, updated_at, "
                "context, initial_hash, owner, lease_expires_at) "
                "VALUES (?, ?, 'RUNNING', ?, ?, ?, ?, ?, ?)",
                (
                    trace_id,
                    program_hash,
                    started_at,
                    started_at,
                    json.dumps(context),
                    initial_hash,
                    owner,
                    lease_until,
                ),
            ),
        ]

    @staticmethod
    def status_statement(
        trace_id: str,
        status: str,
        now: float,
        *,
        suspended_step: str | None = None,
        cursor: str | None = None,
        wake_at: float | None = None,
        error: str | None = None,
    ) -> Statement:
        """Where a run stands, for `write` or for the commit of an envelope; a run that stops
        running holds no lease any more, and no cancel request."""
        return (
            "UPDATE lf_runs SET status = ?, updated_at = ?, suspended_step = ?, cursor = ?, "
            "wake_at = ?, error = ?, owner = NULL, lease_expires_at = NULL, "
            "cancel_requested = NULL WHERE trace_id = ?",
            (status, now, suspended_step, cursor, wake_at, error, trace_id),
        )

    async def claim(
        self,
        trace_id: str,
        now: float,
        *,
        owner: str | None = None,
        lease_until: float | None = None,
        riding: bool = False,
    ) -> bool:
        """The compare-and-set SUSPENDED -> RUNNING: True for exactly one caller, in every
        process sharing the database (the row is the point of serialisation).

        `riding`: not flushed on its own (`Database.execute_riding`), for a caller that
        appends a durable record to this same database before the run does anything (the
        journal, its resume record or the suspension given back): that commit makes the claim
        durable too, and a claim lost with the machine leaves the run SUSPENDED, to be
        resumed again."""
        execute = self.db.execute_riding if riding else self.db.execute
        changed = await execute(
            "UPDATE lf_runs SET status = 'RUNNING', updated_at = ?, owner = ?, "
            "lease_expires_at = ? WHERE trace_id = ? AND status = 'SUSPENDED'",
            (now, owner, lease_until, trace_id),
        )
        return changed == 1

    # -- leases -------------------------------------------------------------------------------

    async def renew(self, owner: str, lease_until: float) -> dict[str, str | None]:
        """Extend every lease `owner` holds on a RUNNING run; the runs it still holds, each
        with the reason of a cancel asked through another instance (else None)."""
        rows = await self.db.fetch(
            "UPDATE lf_runs SET lease_expires_at = ? WHERE owner = ? AND status = 'RUNNING' "
            "RETURNING trace_id, cancel_requested",
            (lease_until, owner),
        )
        return {row[0]: row[1] for row in rows}

    async def request_cancel(self, trace_id: str, reason: str) -> bool:
        """Ask the instance executing a RUNNING run to cancel it (at its next renewal)."""
        changed = await self.db.execute(
            "UPDATE lf_runs SET cancel_requested = ? WHERE trace_id = ? AND status = 'RUNNING'",
            (reason, trace_id),
        )
        return changed == 1

    async def release(self, trace_id: str, owner: str) -> bool:
        """Give up `owner`'s lease on a RUNNING run at once (it could not run here): any
        instance may take it over now."""
        changed = await self.db.execute(
            "UPDATE lf_runs SET owner = NULL, lease_expires_at = NULL "
            "WHERE trace_id = ? AND owner = ? AND status = 'RUNNING'",
            (trace_id, owner),
        )
        return changed == 1

    async def take_over(self, owner: str, now: float, lease_until: float) -> list[str]:
        """Lease to `owner` the RUNNING runs whose lease expired (their instance died) or that
        never had one; oldest first. Instances taking over at once share them out: PostgreSQL
        skips the rows another one is taking."""
        candidates = (
            "SELECT trace_id FROM lf_runs WHERE status = 'RUNNING' "
            "AND (lease_expires_at IS NULL OR lease_expires_at < ?) ORDER BY started_at LIMIT ?"
        )
        return await self._lease(candidates, (now, _TAKE_BATCH), owner, lease_until, "started_at")

    async def due(
        self, now: float, *, owner: str | None = None, lease_until: float | None = None
    ) -> list[str]:
        """SUSPENDED runs whose timer is due, by wake time. With `owner`, each due run is also
        reserved for it until `lease_until`, so that instances sharing the database fire
        different timers (the claim that follows still decides who continues the run)."""
        if owner is None or lease_until is None:
            rows = await self.db.fetch(
                "SELECT trace_id FROM lf_runs WHERE status = 'SUSPENDED' AND wake_at <= ? "
                "ORDER BY wake_at",
                (now,),
            )
            return [row[0] for row in rows]
        candidates = (
            "SELECT trace_id FROM lf_runs WHERE status = 'SUSPENDED' AND wake_at <= ? "
            "AND (owner IS NULL OR owner = ? OR lease_expires_at < ?) ORDER BY wake_at LIMIT ?"
        )
        params = (now, owner, now, _TAKE_BATCH)
        return await self._lease(candidates, params, owner, lease_until, "wake_at")

    async def _lease(
        self,
        candidates: str,
        params: tuple[Any, ...],
        owner: str,
        lease_until: float,
        order: str,
    ) -> list[str]:
        """Lease the rows `candidates` selects to `owner`; their ids, ordered by `order`."""
        if self.db.dialect == "postgresql":
            candidates += " FOR UPDATE SKIP LOCKED"
        rows = await self.db.fetch(
            "UPDATE lf_runs SET owner = ?, lease_expires_at = ? "
            f"WHERE trace_id IN ({candidates}) RETURNING trace_id, {order}",
            (owner, lease_until, *params),
        )
        return [row[0] for row in sorted(rows, key=lambda row: (row[1], row[0]))]

    # -- idempotency keys and events -----------------------------------------------------------

    async def claim_key(
        self, key: str, fingerprint: str, trace_id: str, now: float, retention: float
    ) -> tuple[str, str] | None:
        """Bind `key` to `trace_id` unless a live binding exists (then return it). Atomic
        across processes: the insert either takes the key or finds it taken."""
        async with self.db.transaction() as tx:
            await tx.execute(
                "DELETE FROM lf_run_keys WHERE key = ? AND created_at <= ?", (key, now - retention)
            )
            taken = await tx.execute(
                "INSERT INTO lf_run_keys VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (key, fingerprint, trace_id, now),
            )
            if taken:
                return None
            row = await tx.fetchone(
                "SELECT trace_id, fingerprint FROM lf_run_keys WHERE key = ?", (key,)
            )
        assert row is not None  # the conflicting row, committed (we waited for it)
        return row[0], row[1]

    async def event_seen(self, trace_id: str, event_id: str) -> bool:
        row = await self.db.fetchone(
            "SELECT 1 FROM lf_events WHERE trace_id = ? AND event_id = ?", (trace_id, event_id)
        )
        return row is not None

    async def remember_event(self, trace_id: str, event_id: str, now: float) -> None:
        await self.db.execute(
            "INSERT INTO lf_events VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
            (trace_id, event_id, now),
        )

    async def prune(self, before: float) -> int:
        """Delete finished runs' operational rows (run index, events) last updated before
        `before`, and expired idempotency keys. Envelopes are never touched."""
        finished = "status NOT IN ('RUNNING', 'SUSPENDED')"
        async with self.db.transaction() as tx:
            await tx.execute(
                "DELETE FROM lf_events WHERE trace_id IN "
                f"(SELECT trace_id FROM lf_runs WHERE {finished} AND updated_at < ?)",
                (before,),
            )
            removed = await tx.execute(
                f"DELETE FROM lf_runs WHERE {finished} AND updated_at < ?", (before,)
            )
            await tx.execute("DELETE FROM lf_run_keys WHERE created_at < ?", (before,))
        return removed

    # -- reading ------------------------------------------------------------------------------

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
        rows = await self.db.fetch(query, (*params, limit))
        return [(r[0], r[1], r[2], r[3], r[4], r[5], r[6]) for r in rows]

    async def get(self, trace_id: str) -> RunRow | None:
        rows = await self._select("WHERE r.trace_id = ?", (trace_id,))
        return rows[0] if rows else None

    async def with_status(self, status: str) -> list[RunRow]:
        return await self._select("WHERE r.status = ? ORDER BY r.started_at", (status,))

    async def program(self, program_hash: str) -> dict[str, Any]:
        row = await self.db.fetchone("SELECT body FROM lf_programs WHERE hash = ?", (program_hash,))
        if row is None:
            raise LedgerError(f"no program with hash {program_hash} in {self.db.where}")
        body: dict[str, Any] = json.loads(row[0])
        return body

    async def _select(self, where: str, params: tuple[Any, ...]) -> list[RunRow]:
        query = (
            "SELECT r.trace_id, r.program_hash, p.name, r.status, r.started_at, r.context, "
            "r.initial_hash, r.suspended_step, r.cursor, r.wake_at, r.error "
            f"FROM lf_runs r JOIN lf_programs p ON p.hash = r.program_hash {where}"
        )
        rows = await self.db.fetch(query, params)
        return [
            RunRow(r[0], r[1], r[2], r[3], r[4], json.loads(r[5]), r[6], r[7], r[8], r[9], r[10])
            for r in rows
        ]
