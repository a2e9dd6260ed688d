"""Operational tables in the ledger's database: state that changes (run index, saved programs,
tokens), kept beside the evidence but outside the hash chain.

Each group of tables has its own version table and its own migrations, applied in order in one
transaction (serialised across processes: SQLite's write lock, a PostgreSQL advisory lock).
Tables newer than this code are refused; a group already at the current version is opened
without any DDL, so a PostgreSQL role allowed only to read and write rows can open it.

A group is built over a `Database` the caller opens and closes (`Group(db)`), or over a SQLite
file with a connection of its own, opened and closed with the group (`Group.in_file(path)`).
"""

from __future__ import annotations

import os
from types import TracebackType
from typing import Any, ClassVar, Self

from governance.errors import LedgerError
from governance.storage.database import Database, PrivilegeError, SqliteDatabase, ddl

Migrations = tuple[tuple[int, tuple[str, ...]], ...]


class OperationalTables:
    """Base of a group of operational tables. Subclasses set the class attributes."""

    MIGRATIONS: ClassVar[Migrations]  # (version, statements in SQLite's STRICT form)
    VERSION_TABLE: ClassVar[str]  # one column `version`
    TABLES: ClassVar[tuple[str, ...]]  # the group's tables, in an order rows can be copied
    WHAT: ClassVar[str]  # for messages: "run tables", "token tables", ...

    def __init__(self, db: Database) -> None:
        self.db = db
        self._owns_db = False

    @classmethod
    def in_file(
        cls, path: str | os.PathLike[str], *, synchronous: str = "FULL", **options: Any
    ) -> Self:
        """The group over the SQLite file at `path`, on a connection it opens and closes."""
        group = cls(SqliteDatabase(path, synchronous=synchronous), **options)
        group._owns_db = True
        return group

    @classmethod
    def version(cls) -> int:
        return cls.MIGRATIONS[-1][0]

    @property
    def dialect(self) -> str:
        return self.db.dialect

    @property
    def synchronous(self) -> str:
        return self.db.synchronous

    async def open(self) -> Self:
        """Connect (a path), create or migrate the tables; refuse tables newer than this code."""
        if self._owns_db:
            await self.db.open()
        try:
            await self._migrate()
        except BaseException:
            await self.close()
            raise
        return self

    async def close(self) -> None:
        if self._owns_db:
            await self.db.close()

    async def __aenter__(self) -> Self:
        return await self.open()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def stored_version(self) -> int | None:
        """The version of the tables as stored; None when they do not exist."""
        if not await self.db.table_exists(self.VERSION_TABLE):
            return None
        row = await self.db.fetchone(f"SELECT max(version) FROM {self.VERSION_TABLE}")
        return None if row is None or row[0] is None else int(row[0])

    def _check(self, version: int | None) -> None:
        if version is not None and version > self.version():
            raise LedgerError(
                f"{self.db.where}: {self.WHAT} are version {version}, this ledgerflow reads up "
                f"to {self.version()}; upgrade ledgerflow"
            )

    async def _migrate(self) -> None:
        version = await self.stored_version()
        self._check(version)
        if version == self.version():
            return
        dialect = self.db.dialect
        try:
            async with self.db.transaction() as tx:
                await self.db.lock(tx, self.VERSION_TABLE)
                await tx.execute(
                    ddl(
                        f"CREATE TABLE IF NOT EXISTS {self.VERSION_TABLE} "
                        "(version INTEGER NOT NULL) STRICT",
                        dialect,
                    )
                )
                # Read again under the lock: another process may have migrated meanwhile.
                row = await tx.fetchone(f"SELECT max(version) FROM {self.VERSION_TABLE}")
                current = 0 if row is None or row[0] is None else int(row[0])
                self._check(current)
                for number, statements in self.MIGRATIONS:
                    if number <= current:
                        continue
                    for statement in statements:
                        await tx.execute(ddl(statement, dialect))
                if current < self.version():
                    await tx.execute(
                        f"INSERT INTO {self.VERSION_TABLE} VALUES (?)", (self.version(),)
                    )
        except PrivilegeError as exc:
            found = "missing" if version is None else f"version {version}"
            raise LedgerError(
                f"{self.db.where}: the {self.WHAT} are {found} and this database role may not "
                f"create them ({exc}); run `ledgerflow db init` as the owner role"
            ) from None
