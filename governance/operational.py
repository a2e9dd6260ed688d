"""Operational tables in the ledger's database file: state that changes (run index, saved
programs, tokens), kept beside the evidence but outside the hash chain.

Each group of tables has its own schema version row and its own aiosqlite connection, shared
by every caller in the process. SQLite runs one statement at a time per connection, but an
open transaction (or a half-read statement) spans awaits, so every use of the connection goes
through one lock: no caller's statement lands inside another caller's transaction.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Any, ClassVar, Self

import aiosqlite

from governance.errors import LedgerError


class OperationalTables:
    """Base of a group of operational tables. Subclasses set the class attributes."""

    SCHEMA: ClassVar[tuple[str, ...]]  # CREATE ... IF NOT EXISTS, incl. the version table
    VERSION_TABLE: ClassVar[str]  # one column `version`
    VERSION: ClassVar[int]
    WHAT: ClassVar[str]  # for messages: "run tables", "token tables", ...

    def __init__(self, path: str | os.PathLike[str], *, synchronous: str = "FULL") -> None:
        self.path = os.fspath(path)
        self.synchronous = synchronous
        self._db: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()

    async def open(self) -> Self:
        """Connect, create the tables if missing; refuse tables newer than this code."""
        db = await aiosqlite.connect(self.path, isolation_level=None)
        try:
            await db.execute("PRAGMA busy_timeout = 10000")
            await db.execute(f"PRAGMA synchronous = {self.synchronous}")
            await db.execute("BEGIN IMMEDIATE")
            for statement in self.SCHEMA:
                await db.execute(statement)
            async with db.execute(f"SELECT max(version) FROM {self.VERSION_TABLE}") as cursor:
                row = await cursor.fetchone()
            version = row[0] if row else None
            if version is None:
                await db.execute(f"INSERT INTO {self.VERSION_TABLE} VALUES (?)", (self.VERSION,))
            elif version > self.VERSION:
                raise LedgerError(
                    f"{self.path}: {self.WHAT} are version {version}, this ledgerflow reads up "
                    f"to {self.VERSION}; upgrade ledgerflow"
                )
            await db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                await db.execute("ROLLBACK")
            await db.close()
            raise
        self._db = db
        return self

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None

    async def __aenter__(self) -> Self:
        return await self.open()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise LedgerError(f"{self.WHAT} in {self.path} are not open")
        return self._db

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

    async def _read(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        """All rows of one query, under the lock: a half-read statement keeps a read
        transaction open, and another caller's write on this connection would then have to
        upgrade it, which SQLite refuses ("database is locked") when another writer moved on."""
        async with self._lock, self.db.execute(sql, params) as cursor:
            return list(await cursor.fetchall())

    async def _write(self, sql: str, params: tuple[Any, ...] = ()) -> int:
        """One autocommitted statement under the lock; returns the rows it changed."""
        async with self._lock:
            cursor = await self.db.execute(sql, params)
            return cursor.rowcount
