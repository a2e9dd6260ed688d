"""What the SQLite and PostgreSQL ledger stores share: every read, every write that is the same
SQL in both, the chained append, the schema version checks. A subclass (`sqlite_ledger`,
`postgres_ledger`) supplies its connections, its schema and migrations, and the few statements
whose spelling differs.

Statements here use `?` placeholders and SQL both dialects read; the PostgreSQL store numbers
them (`$1, $2, ...`). A subclass provides:

- `_fetch(sql, params)`: rows of a read on the reading connection (or pool);
- `_transaction()`: one write transaction yielding a `governance.storage.database.Executor`;
  it turns a refused write into `ChainError` and a missing privilege into `LedgerError`;
- `_lock_head(tx)`: inside that transaction, serialise with every other appender (SQLite's
  `BEGIN IMMEDIATE` already holds the one write lock; PostgreSQL takes an advisory lock);
- `_insert_statements(envelopes)`: the statements that insert a batch in seq order;
- `_insert_if_absent(table, key, values)`: an idempotent put of a written-once row.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Any, ClassVar, Self

from governance.envelope import GovernanceEnvelope
from governance.errors import LedgerError
from governance.policy import PolicySnapshot
from governance.storage.database import Dialect, Executor, Row
from governance.storage.ledger_port import (
    CheckpointRecord,
    EnvelopeQuery,
    EnvelopeRow,
    Statement,
    Synchronous,
    envelope_of,
)
from kernel.errors import SchemaVersionError

ENVELOPE_COLUMNS = (
    "seq, execution_id, step_id, kind, status, policy_hash, canonical_snapshot_hash, payload, "
    "recorded_at, prev_hash, entry_hash"
)
_CHECKPOINT_COLUMNS = "idx, tree_size, root, note, created_at"
_PAGE = 2000  # rows per statement of a scan; entry hashes, being small, ten times as many


def now_us() -> int:
    return time.time_ns() // 1000


def _checkpoint(values: Row) -> CheckpointRecord:
    index, size, root, note, created_at = values
    return CheckpointRecord(index, size, bytes(root), note.encode(), created_at)


class SqlLedgerStore:
    """Base of the SQL `LedgerStore`s; see the module docstring for what a subclass supplies."""

    DIALECT: ClassVar[Dialect]
    SCHEMA_VERSION: ClassVar[int]
    # (version, statements): applied in order, each with its schema_version row, in the one
    # transaction of the migration; VERSION_TABLE creates schema_version in the dialect.
    MIGRATIONS: ClassVar[tuple[tuple[int, tuple[str, ...]], ...]]
    VERSION_TABLE: ClassVar[str]
    # LIMIT's value for "no limit": SQLite reads -1 so, PostgreSQL NULL.
    UNLIMITED: ClassVar[int | None]

    def __init__(self, where: str, *, synchronous: Synchronous, readonly: bool) -> None:
        if synchronous not in ("FULL", "NORMAL"):
            raise ValueError(f"synchronous must be 'FULL' or 'NORMAL', got {synchronous!r}")
        self.where = where  # for messages: a file path, or a database URL without its password
        self.synchronous: Synchronous = synchronous
        self.readonly = readonly

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- what a subclass supplies ------------------------------------------------------------

    async def open(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def _fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        raise NotImplementedError

    def _transaction(self) -> AbstractAsyncContextManager[Executor]:
        raise NotImplementedError

    async def _lock_head(self, tx: Executor) -> None:
        raise NotImplementedError

    def _insert_statements(
        self, envelopes: Sequence[GovernanceEnvelope]
    ) -> list[tuple[str, Sequence[Any]]]:
        raise NotImplementedError

    def _insert_if_absent(
        self, table: str, key: str, values: dict[str, Any]
    ) -> tuple[str, Sequence[Any]]:
        raise NotImplementedError

    # -- shared plumbing ---------------------------------------------------------------------

    async def _fetchval(self, sql: str, params: Sequence[Any] = ()) -> Any:
        rows = await self._fetch(sql, params)
        return rows[0][0] if rows else None

    async def _write(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> None:
        """Run `statements` in one transaction, all or none."""
        if not statements:
            return
        async with self._transaction() as tx:
            for sql, params in statements:
                await tx.execute(sql, params)

    def holds(self, dialect: str, where: str) -> bool:
        """Whether the database `where` (of `dialect`) is this store's own: statements on its
        operational tables may then ride in the store's commits (`append_after(also=...)`)."""
        if dialect != self.DIALECT:
            return False
        if dialect == "sqlite":
            return os.path.realpath(where) == os.path.realpath(self.where)
        return where == self.where

    def _check_version(self, version: int) -> None:
        supported = self.SCHEMA_VERSION
        if version > supported:
            raise SchemaVersionError(
                f"ledger {self.where} has schema version {version}, newer than version "
                f"{supported} which this ledgerflow supports: upgrade ledgerflow to open it",
                found=version,
                supported=supported,
            )
        if self.readonly and version < supported:
            raise SchemaVersionError(
                f"ledger {self.where} has schema version {version}, older than "
                f"{supported}: open it once for writing to migrate it",
                found=version,
                supported=supported,
            )

    async def _apply_migrations(self, tx: Executor, version: int) -> None:
        """Inside the migrating transaction, on a schema at `version`: every later migration."""
        if version == 0:
            await tx.execute(self.VERSION_TABLE)
        for number, statements in self.MIGRATIONS:
            if number <= version:
                continue
            for statement in statements:
                await tx.execute(statement)
            await tx.execute(
                "INSERT INTO schema_version (version, applied_at) VALUES (?, ?)",
                (number, now_us()),
            )

    # -- envelopes ---------------------------------------------------------------------------

    async def append_batch(self, envelopes: Sequence[GovernanceEnvelope]) -> None:
        await self._write(self._insert_statements(envelopes))

    async def append_after(
        self,
        known_size: int,
        seal: Callable[[list[GovernanceEnvelope]], Sequence[GovernanceEnvelope]],
        also: Sequence[Statement] = (),
    ) -> tuple[list[GovernanceEnvelope], list[GovernanceEnvelope]]:
        async with self._transaction() as tx:
            # Under the head lock no other writer can append between reading what they added
            # and inserting after it (PostgreSQL's READ COMMITTED lets the next statement see
            # every append committed before the lock was granted).
            await self._lock_head(tx)
            rows = await tx.fetch(
                f"SELECT {ENVELOPE_COLUMNS} FROM envelopes WHERE seq >= ? ORDER BY seq",
                (known_size,),
            )
            newcomers = [envelope_of(EnvelopeRow(*values)) for values in rows]
            sealed = list(seal(newcomers))
            for sql, params in [*self._insert_statements(sealed), *also]:
                await tx.execute(sql, params)
        return newcomers, sealed

    async def head(self) -> GovernanceEnvelope | None:
        rows = await self._fetch(
            f"SELECT {ENVELOPE_COLUMNS} FROM envelopes ORDER BY seq DESC LIMIT 1"
        )
        return envelope_of(EnvelopeRow(*rows[0])) if rows else None

    async def read_range(self, start: int, stop: int) -> list[GovernanceEnvelope]:
        return [envelope_of(row) async for row in self.scan(start, stop)]

    async def scan(self, start: int = 0, stop: int | None = None) -> AsyncIterator[EnvelopeRow]:
        async for page in self._pages(ENVELOPE_COLUMNS, start, stop, _PAGE):
            for values in page:
                yield EnvelopeRow(*values)

    async def scan_pages(self, start: int = 0) -> AsyncIterator[list[Row]]:
        """`scan`'s rows as pages of column values in `EnvelopeRow` order, for a reader of the
        whole log that needs no `EnvelopeRow` per row (the verifier)."""
        async for page in self._pages(ENVELOPE_COLUMNS, start, None, _PAGE):
            yield page

    async def entry_hashes(self, start: int = 0, stop: int | None = None) -> AsyncIterator[bytes]:
        async for page in self._pages("seq, entry_hash", start, stop, 10 * _PAGE):
            for _, entry_hash in page:
                yield bytes(entry_hash)

    async def _pages(
        self, columns: str, start: int, stop: int | None, size: int
    ) -> AsyncIterator[list[Row]]:
        """Rows with start <= seq (< stop), a page (one statement) at a time: the log only
        grows, so pages by seq are consistent."""
        bound = "" if stop is None else " AND seq < ?"
        sql = f"SELECT {columns} FROM envelopes WHERE seq >= ?{bound} ORDER BY seq LIMIT ?"
        position = start
        while True:
            params = (position, size) if stop is None else (position, stop, size)
            page = await self._fetch(sql, params)
            if page:
                yield page
            if len(page) < size:
                return
            position = page[-1][0] + 1

    async def query(self, query: EnvelopeQuery) -> list[GovernanceEnvelope]:
        clauses: list[str] = []
        params: list[Any] = []
        for column, operator, value in query.conditions():
            clauses.append(f"{column} {operator} ?")
            params.append(value)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        params += [self.UNLIMITED if query.limit is None else query.limit, query.offset]
        rows = await self._fetch(
            f"SELECT {ENVELOPE_COLUMNS} FROM envelopes{where} ORDER BY seq LIMIT ? OFFSET ?",
            params,
        )
        return [envelope_of(EnvelopeRow(*values)) for values in rows]

    # -- policies, keys, origin --------------------------------------------------------------

    async def put_policy(self, policy: PolicySnapshot) -> str:
        policy_hash = policy.policy_hash
        body = policy.canonical_bytes().decode()
        row = {"policy_hash": policy_hash, "body": body, "created_at": now_us()}
        await self._write([self._insert_if_absent("policies", "policy_hash", row)])
        return policy_hash

    async def get_policy(self, policy_hash: str) -> PolicySnapshot | None:
        body = await self._fetchval(
            "SELECT body FROM policies WHERE policy_hash = ?", (policy_hash,)
        )
        return None if body is None else PolicySnapshot.model_validate_json(body)

    async def list_policies(self) -> list[tuple[str, str]]:
        rows = await self._fetch("SELECT policy_hash, body FROM policies ORDER BY policy_hash")
        return [(policy_hash, body) for policy_hash, body in rows]

    async def add_keys(self, verifier_keys: Sequence[str]) -> None:
        now = now_us()
        await self._write(
            [
                self._insert_if_absent(
                    "signing_keys", "verifier_key", {"verifier_key": key, "added_at": now}
                )
                for key in verifier_keys
            ]
        )

    async def list_keys(self) -> list[str]:
        rows = await self._fetch(
            "SELECT verifier_key FROM signing_keys ORDER BY added_at, verifier_key"
        )
        return [key for (key,) in rows]

    async def get_origin(self) -> str | None:
        value = await self._fetchval("SELECT value FROM ledger_meta WHERE key = 'origin'")
        return None if value is None else str(value)

    async def set_origin(self, origin: str) -> None:
        row = {"key": "origin", "value": origin}
        await self._write([self._insert_if_absent("ledger_meta", "key", row)])
        stored = await self.get_origin()
        if stored != origin:
            raise LedgerError(f"ledger {self.where} belongs to origin {stored!r}, not {origin!r}")

    # -- checkpoints -------------------------------------------------------------------------

    async def save_checkpoint(self, record: CheckpointRecord) -> None:
        values = (
            record.index,
            record.tree_size,
            record.root,
            record.note.decode(),
            record.created_at,
        )
        sql = f"INSERT INTO checkpoints ({_CHECKPOINT_COLUMNS}) VALUES (?, ?, ?, ?, ?)"
        await self._write([(sql, values)])

    async def list_checkpoints(self) -> list[CheckpointRecord]:
        rows = await self._fetch(f"SELECT {_CHECKPOINT_COLUMNS} FROM checkpoints ORDER BY idx")
        return [_checkpoint(values) for values in rows]

    async def last_checkpoint(self) -> CheckpointRecord | None:
        rows = await self._fetch(
            f"SELECT {_CHECKPOINT_COLUMNS} FROM checkpoints ORDER BY idx DESC LIMIT 1"
        )
        return _checkpoint(rows[0]) if rows else None
