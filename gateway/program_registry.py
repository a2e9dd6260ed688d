"""Saved programs: named, versioned program bodies kept in the ledger's database file.

`save(name, program)` makes version n+1 of `name`, unless the program is the one its latest
version already holds (same hash): then that version is returned and nothing is written, so a
client may save on every call. `retire(name)` stops new runs by that name; its versions, the
runs they made, their traces and envelopes all stay. Saving a retired name again brings it back.

A run of a saved program records the version's hash as its program hash (governance.runs), so a
trace names the exact version it ran. Tables of their own, through a connection of their own
(as governance.runs does), in the same file as the ledger.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from governance.operational import OperationalTables
from kernel import Program

REGISTRY_SCHEMA_VERSION = 1

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS lf_registry_schema (version INTEGER NOT NULL) STRICT",
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
    """Open with `await ProgramRegistry(path).open()`; close with `await close()`."""

    SCHEMA = _SCHEMA
    VERSION_TABLE = "lf_registry_schema"
    VERSION = REGISTRY_SCHEMA_VERSION
    WHAT = "program tables"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        synchronous: str = "FULL",
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(path, synchronous=synchronous)
        self._clock = clock

    async def save(self, name: str, program: Program) -> SavedProgram:
        """Version n+1 of `name`, or its latest version if that holds the same program."""
        if not name.strip():
            raise ValueError("a saved program needs a non-empty name")
        async with self._transaction() as db:
            latest = await self._fetch_one(f"{_LATEST} AND p.name = ?", (name,))
            if latest is None or latest.hash != program.hash:
                version = 1 if latest is None else latest.version + 1
                await db.execute(
                    "INSERT INTO lf_saved_programs VALUES (?, ?, ?, ?, ?)",
                    (name, version, program.hash, _dumps(program.data), self._clock()),
                )
            await db.execute(
                "INSERT INTO lf_program_names VALUES (?, NULL) "
                "ON CONFLICT (name) DO UPDATE SET retired_at = NULL",
                (name,),
            )
            saved = await self._fetch_one(f"{_LATEST} AND p.name = ?", (name,))
        assert saved is not None
        return saved

    async def get(self, name: str, version: int | None = None) -> SavedProgram | None:
        """The given version of `name` (its latest when None); None if there is no such one."""
        async with self._lock:
            if version is None:
                return await self._fetch_one(f"{_LATEST} AND p.name = ?", (name,))
            query = (
                f"SELECT {_COLUMNS} FROM lf_saved_programs p JOIN lf_program_names n "
                "ON n.name = p.name WHERE p.name = ? AND p.version = ?"
            )
            return await self._fetch_one(query, (name, version))

    async def list(self) -> list[SavedProgram]:
        """The latest version of every saved name, retired ones included (flagged), by name."""
        return [_row(r) for r in await self._read(f"{_LATEST} ORDER BY p.name")]

    async def retire(self, name: str) -> SavedProgram | None:
        """Refuse new runs of `name` from now on; None if `name` was never saved."""
        await self._write(
            "UPDATE lf_program_names SET retired_at = coalesce(retired_at, ?) WHERE name = ?",
            (self._clock(), name),
        )
        return await self.get(name)

    async def _fetch_one(self, query: str, params: tuple[Any, ...]) -> SavedProgram | None:
        async with self.db.execute(query, params) as cursor:
            row = await cursor.fetchone()
        return None if row is None else _row(row)


def _row(row: Any) -> SavedProgram:
    name, version, digest, body, saved_at, retired_at = row
    when = dt.datetime.fromtimestamp(saved_at, dt.UTC)
    return SavedProgram(name, version, digest, when, retired_at is not None, json.loads(body))


def _dumps(body: dict[str, Any]) -> str:
    return json.dumps(body, sort_keys=True, separators=(",", ":"))
