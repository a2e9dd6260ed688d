"""Saved programs: named, versioned program bodies kept in the ledger's database file.

`save(name, program)` makes version n+1 of `name`, unless the program is the one its latest
version already holds (same hash): then that version is returned and nothing is written, so a
client may save on every call. `retire(name)` stops new runs by that name; its versions, the
runs they made, their traces and envelopes all stay. Saving a retired name again brings it back.

A run of a saved program records the version's hash as its program hash (governance.runs), so a
trace names the exact version it ran. Tables of their own in the ledger's database (as
governance.runs has); two instances saving the same name at once get versions n+1 and n+2,
never the same number twice (the primary key refuses the second, which then retries).
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from governance.storage.database import ConstraintError, Database, Executor
from governance.storage.operational_tables import OperationalTables
from kernel import Program

_SAVE_ATTEMPTS = 5
_V1 = (
    """CREATE TABLE IF NOT EXISTS lf_saved_programs (
        name TEXT NOT NULL,
        version INTEGER NOT NULL,
        hash TEXT NOT NULL,
        body TEXT NOT NULL,
        saved_at REAL NOT NULL,
        PRIMARY KEY (name, version)
    ) STRICT""",
    """CREATE TABLE IF NOT EXISTS lf_program_names (
        name TEXT PRIMARY KEY,
        retired_at REAL
    ) STRICT""",
)
_COLUMNS = "p.name, p.version, p.hash, p.body, p.saved_at, n.retired_at"
_LATEST = (
    f"SELECT {_COLUMNS} FROM lf_saved_programs p JOIN lf_program_names n ON n.name = p.name "
    "WHERE p.version = (SELECT max(version) FROM lf_saved_programs WHERE name = p.name)"
)


@dataclass(frozen=True, slots=True)
class SavedProgram:
    """One version of a saved program. `retired` is the name's state now, for every version."""

    name: str
    version: int
    hash: str
    saved_at: dt.datetime
    retired: bool
    body: dict[str, Any]

    def program(self) -> Program:
        return Program.from_dict(self.body)


class ProgramRegistry(OperationalTables):
    """Open with `await ProgramRegistry(db).open()` or `.in_file(path)`; close with `close()`."""

    MIGRATIONS = ((1, _V1),)
    VERSION_TABLE = "lf_registry_schema"
    TABLES = ("lf_program_names", "lf_saved_programs")
    WHAT = "program tables"

    def __init__(
        self,
        db: Database,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(db)
        self._clock = clock

    async def save(self, name: str, program: Program) -> SavedProgram:
        """Version n+1 of `name`, or its latest version if that holds the same program."""
        if not name.strip():
            raise ValueError("a saved program needs a non-empty name")
        for _ in range(_SAVE_ATTEMPTS - 1):
            try:
                return await self._save(name, program)
            except ConstraintError:
                continue  # another instance took version n+1 first: read again, take n+2
        return await self._save(name, program)

    async def _save(self, name: str, program: Program) -> SavedProgram:
        async with self.db.transaction() as tx:
            latest = await _fetch_one(tx, f"{_LATEST} AND p.name = ?", (name,))
            if latest is None or latest.hash != program.hash:
                version = 1 if latest is None else latest.version + 1
                await tx.execute(
                    "INSERT INTO lf_saved_programs VALUES (?, ?, ?, ?, ?)",
                    (name, version, program.hash, _dumps(program.data), self._clock()),
                )
            await tx.execute(
                "INSERT INTO lf_program_names VALUES (?, NULL) "
                "ON CONFLICT (name) DO UPDATE SET retired_at = NULL",
                (name,),
            )
            saved = await _fetch_one(tx, f"{_LATEST} AND p.name = ?", (name,))
        assert saved is not None
        return saved

    async def get(self, name: str, version: int | None = None) -> SavedProgram | None:
        """The given version of `name` (its latest when None); None if there is no such one."""
        if version is None:
            return await _fetch_one(self.db, f"{_LATEST} AND p.name = ?", (name,))
        query = (
            f"SELECT {_COLUMNS} FROM lf_saved_programs p JOIN lf_program_names n "
            "ON n.name = p.name WHERE p.name = ? AND p.version = ?"
        )
        return await _fetch_one(self.db, query, (name, version))

    async def list(self) -> list[SavedProgram]:
        """The latest version of every saved name, retired ones included (flagged), by name."""
        return [_row(r) for r in await self.db.fetch(f"{_LATEST} ORDER BY p.name")]

    async def retire(self, name: str) -> SavedProgram | None:
        """Refuse new runs of `name` from now on; None if `name` was never saved."""
        await self.db.execute(
            "UPDATE lf_program_names SET retired_at = coalesce(retired_at, ?) WHERE name = ?",
            (self._clock(), name),
        )
        return await self.get(name)


async def _fetch_one(
    executor: Executor, query: str, params: tuple[Any, ...]
) -> SavedProgram | None:
    row = await executor.fetchone(query, params)
    return None if row is None else _row(row)


def _row(row: Any) -> SavedProgram:
    name, version, digest, body, saved_at, retired_at = row
    when = dt.datetime.fromtimestamp(saved_at, dt.UTC)
    return SavedProgram(name, version, digest, when, retired_at is not None, json.loads(body))


def _dumps(body: dict[str, Any]) -> str:
    return json.dumps(body, sort_keys=True, separators=(",", ":"))
