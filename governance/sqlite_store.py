"""The SQLite `LedgerStore`: one database file in WAL mode, append-only by schema triggers.

Durability: `journal_mode=WAL` and `synchronous=FULL` by default, so a commit is on disk (the WAL
is fsynced) before `append_batch` returns; `synchronous=NORMAL` survives a process crash but may
lose the last commits on power loss. `busy_timeout` lets another process's short transaction
finish instead of failing at once.

Append-only, enforced by the database itself (a program writing with plain `sqlite3` meets the
same refusals):

- `envelopes`: BEFORE UPDATE and BEFORE DELETE abort; BEFORE INSERT aborts unless
  `seq = max(seq) + 1` (0 when empty) and `prev_hash` is the entry hash of the envelope at
  `max(seq)` (32 zero bytes when empty). `INSERT OR REPLACE` / `REPLACE INTO` of a stored seq is
  therefore refused too: the INSERT trigger fires before any conflict resolution.
- `checkpoints`: no UPDATE or DELETE; an INSERT must take the next index, grow the tree and
  cover only stored envelopes.
- `policies`, `signing_keys` and `ledger_meta`: no UPDATE or DELETE, and no INSERT of an
  existing key (which also stops REPLACE); idempotent puts insert only when absent.

Someone holding the file can still drop the triggers: that is what `governance.verify` and the
signed checkpoints are for.

Schema versions: `schema_version` holds one row per applied migration; `MIGRATIONS` lists them,
each a tuple of statements applied in one transaction. Opening a file of a newer version raises
`SchemaVersionError` naming both versions. Later versions may add operational tables that are not
part of the chain (runs, cursors, idempotency keys) and so need no triggers.

Connections: writes go through one connection, serialised by a lock, each batch in one
transaction: a single multi-row INSERT (autocommit, one round trip to the SQLite thread) or, for
large batches, several inside `BEGIN IMMEDIATE ... COMMIT`. Reads use a second connection
(`query_only`), so a reader sees only committed envelopes. Long scans page by seq, each page
its own statement (the log is append-only, so pages are consistent).
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import aiosqlite

from governance.envelope import GovernanceEnvelope
from governance.errors import ChainError, LedgerError
from governance.policy import PolicySnapshot
from governance.store import (
    CheckpointRecord,
    EnvelopeQuery,
    EnvelopeRow,
    Synchronous,
    envelope_of,
    row_values,
)
from kernel.errors import SchemaVersionError

_PAGE = 2000


def _frozen(table: str) -> tuple[str, ...]:
    """Triggers refusing UPDATE and DELETE on an append-only table."""
    return tuple(
        f"CREATE TRIGGER {table}_no_{verb.lower()} BEFORE {verb} ON {table} BEGIN "
        f"SELECT RAISE(ABORT, 'ledger: {table} is append-only: {verb} refused'); END"
        for verb in ("UPDATE", "DELETE")
    )


def _insert_once(table: str, key: str) -> str:
    """A trigger refusing an INSERT of an existing key (so REPLACE cannot swap a row)."""
    return (
        f"CREATE TRIGGER {table}_insert_once BEFORE INSERT ON {table} BEGIN "
        f"SELECT RAISE(ABORT, 'ledger: {table}.{key} exists: rows are written once') "
        f"WHERE EXISTS (SELECT 1 FROM {table} WHERE {key} = NEW.{key}); END"
    )


_V1: tuple[str, ...] = (
    """CREATE TABLE ledger_meta (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    ) STRICT""",
    *_frozen("ledger_meta"),
    _insert_once("ledger_meta", "key"),
    """CREATE TABLE policies (
        policy_hash TEXT PRIMARY KEY CHECK (length(policy_hash) = 64),
        body TEXT NOT NULL,
        created_at INTEGER NOT NULL
    ) STRICT""",
    *_frozen("policies"),
    _insert_once("policies", "policy_hash"),
    """CREATE TABLE signing_keys (
        verifier_key TEXT PRIMARY KEY,
        added_at INTEGER NOT NULL
    ) STRICT""",
    *_frozen("signing_keys"),
    _insert_once("signing_keys", "verifier_key"),
    """CREATE TABLE envelopes (
        seq INTEGER PRIMARY KEY CHECK (seq >= 0),
        execution_id TEXT NOT NULL,
        step_id TEXT,
        kind TEXT NOT NULL,
        status TEXT,
        policy_hash TEXT NOT NULL,
        canonical_snapshot_hash TEXT,
        payload TEXT NOT NULL,
        recorded_at INTEGER NOT NULL,
        prev_hash BLOB NOT NULL CHECK (length(prev_hash) = 32),
        entry_hash BLOB NOT NULL CHECK (length(entry_hash) = 32)
    ) STRICT""",
    "CREATE INDEX envelopes_by_execution ON envelopes (execution_id, seq)",
    "CREATE INDEX envelopes_by_time ON envelopes (recorded_at)",
    "CREATE INDEX envelopes_by_policy ON envelopes (policy_hash, seq)",
    "CREATE INDEX envelopes_by_kind ON envelopes (kind, seq)",
    *_frozen("envelopes"),
    """CREATE TRIGGER envelopes_chain BEFORE INSERT ON envelopes BEGIN
        SELECT RAISE(ABORT, 'ledger: envelope seq must be max(seq) + 1 (0 when empty)')
        WHERE NEW.seq IS NOT (SELECT COALESCE(MAX(seq) + 1, 0) FROM envelopes);
        SELECT RAISE(ABORT, 'ledger: envelope prev_hash must be the entry_hash of the last one')
        WHERE NEW.prev_hash IS NOT COALESCE(
            (SELECT entry_hash FROM envelopes ORDER BY seq DESC LIMIT 1), zeroblob(32));
    END""",
    """CREATE TABLE checkpoints (
        idx INTEGER PRIMARY KEY CHECK (idx >= 0),
        tree_size INTEGER NOT NULL CHECK (tree_size >= 1),
        root BLOB NOT NULL CHECK (length(root) = 32),
        note TEXT NOT NULL,
        created_at INTEGER NOT NULL
    ) STRICT""",
    *_frozen("checkpoints"),
    """CREATE TRIGGER checkpoints_chain BEFORE INSERT ON checkpoints BEGIN
        SELECT RAISE(ABORT, 'ledger: checkpoint idx must be max(idx) + 1 (0 when empty)')
        WHERE NEW.idx IS NOT (SELECT COALESCE(MAX(idx) + 1, 0) FROM checkpoints);
        SELECT RAISE(ABORT, 'ledger: a checkpoint must cover more entries than the last one')
        WHERE NEW.tree_size <= COALESCE(
            (SELECT tree_size FROM checkpoints ORDER BY idx DESC LIMIT 1), 0);
        SELECT RAISE(ABORT, 'ledger: a checkpoint cannot cover envelopes that are not stored')
        WHERE NEW.tree_size > (SELECT COALESCE(MAX(seq) + 1, 0) FROM envelopes);
    END""",
)

# (version, statements): applied in order, each in one transaction with its schema_version row.
MIGRATIONS: tuple[tuple[int, tuple[str, ...]], ...] = ((1, _V1),)
SCHEMA_VERSION = MIGRATIONS[-1][0]

_ENVELOPE_COLUMNS = (
    "seq, execution_id, step_id, kind, status, policy_hash, canonical_snapshot_hash, payload, "
    "recorded_at, prev_hash, entry_hash"
)
_INSERT_ENVELOPES = f"INSERT INTO envelopes ({_ENVELOPE_COLUMNS}) VALUES "
_ENVELOPE_PLACEHOLDERS = "(?,?,?,?,?,?,?,?,?,?,?)"
# 11 columns: 500 rows stay far below SQLite's limit of 32766 parameters per statement.
_ROWS_PER_STATEMENT = 500
_CHECKPOINT_COLUMNS = "idx, tree_size, root, note, created_at"


def _now_us() -> int:
    return time.time_ns() // 1000


def _row(values: Any) -> EnvelopeRow:
    return EnvelopeRow(*values)


def _checkpoint(values: Any) -> CheckpointRecord:
    index, size, root, note, created_at = values
    return CheckpointRecord(index, size, root, note.encode(), created_at)


class SqliteLedgerStore:
    """A `LedgerStore` in one SQLite file. Use one writing instance per file.

    `readonly=True` opens an existing file without creating, migrating or writing anything (for
    auditors); its write methods raise.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        synchronous: Synchronous = "FULL",
        busy_timeout_ms: int = 5000,
        readonly: bool = False,
    ) -> None:
        if synchronous not in ("FULL", "NORMAL"):
            raise ValueError(f"synchronous must be 'FULL' or 'NORMAL', got {synchronous!r}")
        self.path = Path(path)
        self.synchronous: Synchronous = synchronous
        self.busy_timeout_ms = busy_timeout_ms
        self.readonly = readonly
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._write_lock = asyncio.Lock()

    async def __aenter__(self) -> SqliteLedgerStore:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        if self._reader is not None:
            return
        if self.readonly:
            if not self.path.exists():
                raise LedgerError(f"ledger file {self.path} does not exist")
            uri = self.path.resolve().as_uri() + "?mode=ro"
            reader = await aiosqlite.connect(uri, uri=True, isolation_level=None)
            try:
                await self._configure(reader, query_only=True)
                await self._check_version(reader, await self._version(reader))
            except BaseException:
                await reader.close()
                raise
            self._reader = reader
            return
        writer = await aiosqlite.connect(self.path, isolation_level=None)
        try:
            await self._configure(writer, query_only=False)
            mode = await self._scalar(writer, "PRAGMA journal_mode=WAL")
            if str(mode).lower() != "wal":
                raise LedgerError(f"{self.path}: SQLite refused WAL mode (journal_mode={mode})")
            await self._migrate(writer)
            reader = await aiosqlite.connect(self.path, isolation_level=None)
        except BaseException:
            await writer.close()
            raise
        try:
            await self._configure(reader, query_only=True)
        except BaseException:
            await writer.close()
            await reader.close()
            raise
        self._writer, self._reader = writer, reader

    async def close(self) -> None:
        writer, reader = self._writer, self._reader
        self._writer = self._reader = None
        for connection in (reader, writer):
            if connection is not None:
                await connection.close()

    async def _configure(self, connection: aiosqlite.Connection, *, query_only: bool) -> None:
        await connection.execute(f"PRAGMA busy_timeout={int(self.busy_timeout_ms)}")
        await connection.execute(f"PRAGMA synchronous={self.synchronous}")
        if query_only:
            await connection.execute("PRAGMA query_only=ON")

    @staticmethod
    async def _scalar(
        connection: aiosqlite.Connection, sql: str, params: Sequence[Any] = ()
    ) -> Any:
        rows = list(await connection.execute_fetchall(sql, params))
        return rows[0][0] if rows else None

    async def _version(self, connection: aiosqlite.Connection) -> int:
        tables = {
            row[0]
            for row in await connection.execute_fetchall(
                "SELECT name FROM sqlite_master WHERE type = 'table'"
            )
        }
        if "schema_version" not in tables:
            if tables:
                raise LedgerError(
                    f"{self.path} is an SQLite database but not a ledgerflow ledger "
                    f"(no schema_version table; tables: {sorted(tables)})"
                )
            return 0
        version = await self._scalar(connection, "SELECT MAX(version) FROM schema_version")
        return int(version or 0)

    async def _check_version(self, connection: aiosqlite.Connection, version: int) -> None:
        if version > SCHEMA_VERSION:
            raise SchemaVersionError(
                f"ledger file {self.path} has schema version {version}, newer than version "
                f"{SCHEMA_VERSION} which this ledgerflow supports: upgrade ledgerflow to open it",
                found=version,
                supported=SCHEMA_VERSION,
            )
        if self.readonly and version < SCHEMA_VERSION:
            raise SchemaVersionError(
                f"ledger file {self.path} has schema version {version}, older than "
                f"{SCHEMA_VERSION}: open it once for writing to migrate it",
                found=version,
                supported=SCHEMA_VERSION,
            )

    async def _migrate(self, connection: aiosqlite.Connection) -> None:
        # The version is read inside the write transaction: two processes never both migrate.
        await connection.execute("BEGIN IMMEDIATE")
        try:
            version = await self._version(connection)
            await self._check_version(connection, version)
            if version == 0:
                await connection.execute(
                    "CREATE TABLE schema_version ("
                    "version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL) STRICT"
                )
            for number, statements in MIGRATIONS:
                if number <= version:
                    continue
                for statement in statements:
                    await connection.execute(statement)
                await connection.execute(
                    "INSERT INTO schema_version (version, applied_at) VALUES (?, ?)",
                    (number, _now_us()),
                )
            await connection.execute("COMMIT")
        except BaseException:
            if connection.in_transaction:
                await connection.execute("ROLLBACK")
            raise

    def _write_connection(self) -> aiosqlite.Connection:
        if self._writer is None:
            what = "read-only" if self.readonly else "not open"
            raise LedgerError(f"ledger store {self.path} is {what}: cannot write")
        return self._writer

    def _read_connection(self) -> aiosqlite.Connection:
        if self._reader is None:
            raise LedgerError(f"ledger store {self.path} is not open")
        return self._reader

    async def _write(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> None:
        """Run `statements` atomically; trigger refusals become ChainError.

        A single statement is its own transaction (autocommit: one round trip to the SQLite
        thread, which matters when every commit is an fsync); several share one
        BEGIN IMMEDIATE ... COMMIT.
        """
        connection = self._write_connection()
        async with self._write_lock:
            try:
                if len(statements) == 1:
                    await connection.execute(*statements[0])
                else:
                    await connection.execute("BEGIN IMMEDIATE")
                    for sql, params in statements:
                        await connection.execute(sql, params)
                    await connection.execute("COMMIT")
            except BaseException as exc:
                if connection.in_transaction:
                    await connection.execute("ROLLBACK")
                if isinstance(exc, sqlite3.IntegrityError):
                    raise ChainError(f"{self.path}: the store refused the write: {exc}") from exc
                raise

    # -- envelopes -------------------------------------------------------------------------

    async def append_batch(self, envelopes: Sequence[GovernanceEnvelope]) -> None:
        # Multi-row INSERTs: the triggers still check every row, in order, against the rows
        # before it (a test holds a bad row in the middle of a batch to a refusal of the whole).
        statements: list[tuple[str, Sequence[Any]]] = []
        for first in range(0, len(envelopes), _ROWS_PER_STATEMENT):
            chunk = envelopes[first : first + _ROWS_PER_STATEMENT]
            sql = _INSERT_ENVELOPES + ",".join([_ENVELOPE_PLACEHOLDERS] * len(chunk))
            statements.append((sql, [value for e in chunk for value in row_values(e)]))
        if statements:
            await self._write(statements)

    async def append_after(
        self,
        known_size: int,
        seal: Callable[[list[GovernanceEnvelope]], Sequence[GovernanceEnvelope]],
    ) -> tuple[list[GovernanceEnvelope], list[GovernanceEnvelope]]:
        connection = self._write_connection()
        async with self._write_lock:
            try:
                # IMMEDIATE takes SQLite's write lock now: no other process can append between
                # reading the head and inserting after it.
                await connection.execute("BEGIN IMMEDIATE")
                rows = await connection.execute_fetchall(
                    f"SELECT {_ENVELOPE_COLUMNS} FROM envelopes WHERE seq >= ? ORDER BY seq",
                    (known_size,),
                )
                newcomers = [envelope_of(_row(values)) for values in rows]
                sealed = list(seal(newcomers))
                for first in range(0, len(sealed), _ROWS_PER_STATEMENT):
                    chunk = sealed[first : first + _ROWS_PER_STATEMENT]
                    sql = _INSERT_ENVELOPES + ",".join([_ENVELOPE_PLACEHOLDERS] * len(chunk))
                    await connection.execute(sql, [v for e in chunk for v in row_values(e)])
                await connection.execute("COMMIT")
            except BaseException as exc:
                if connection.in_transaction:
                    await connection.execute("ROLLBACK")
                if isinstance(exc, sqlite3.IntegrityError):
                    raise ChainError(f"{self.path}: the store refused the write: {exc}") from exc
                raise
        return newcomers, sealed

    async def head(self) -> GovernanceEnvelope | None:
        rows = list(
            await self._read_connection().execute_fetchall(
                f"SELECT {_ENVELOPE_COLUMNS} FROM envelopes ORDER BY seq DESC LIMIT 1"
            )
        )
        return envelope_of(_row(rows[0])) if rows else None

    async def read_range(self, start: int, stop: int) -> list[GovernanceEnvelope]:
        return [envelope_of(row) async for row in self.scan(start, stop)]

    async def scan(self, start: int = 0, stop: int | None = None) -> AsyncIterator[EnvelopeRow]:
        reader = self._read_connection()
        bound = "" if stop is None else " AND seq < ?"
        sql = (
            f"SELECT {_ENVELOPE_COLUMNS} FROM envelopes WHERE seq >= ?{bound} ORDER BY seq LIMIT ?"
        )
        position = start
        while True:
            params = (position, _PAGE) if stop is None else (position, stop, _PAGE)
            page = list(await reader.execute_fetchall(sql, params))
            for values in page:
                yield _row(values)
            if len(page) < _PAGE:
                return
            position = page[-1][0] + 1

    async def entry_hashes(self, start: int = 0, stop: int | None = None) -> AsyncIterator[bytes]:
        reader = self._read_connection()
        bound = "" if stop is None else " AND seq < ?"
        sql = f"SELECT seq, entry_hash FROM envelopes WHERE seq >= ?{bound} ORDER BY seq LIMIT ?"
        position = start
        page_size = 10 * _PAGE
        while True:
            params = (position, page_size) if stop is None else (position, stop, page_size)
            page = list(await reader.execute_fetchall(sql, params))
            for _, entry_hash in page:
                yield entry_hash
            if len(page) < page_size:
                return
            position = page[-1][0] + 1

    async def query(self, query: EnvelopeQuery) -> list[GovernanceEnvelope]:
        clauses: list[str] = []
        params: list[Any] = []
        for column, operator, value in query.conditions():
            clauses.append(f"{column} {operator} ?")
            params.append(value)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        params += [-1 if query.limit is None else query.limit, query.offset]
        rows = await self._read_connection().execute_fetchall(
            f"SELECT {_ENVELOPE_COLUMNS} FROM envelopes{where} ORDER BY seq LIMIT ? OFFSET ?",
            params,
        )
        return [envelope_of(_row(values)) for values in rows]

    # -- policies, keys, origin ------------------------------------------------------------

    async def put_policy(self, policy: PolicySnapshot) -> str:
        policy_hash = policy.policy_hash
        await self._write(
            [
                (
                    "INSERT INTO policies (policy_hash, body, created_at) SELECT ?, ?, ? "
                    "WHERE NOT EXISTS (SELECT 1 FROM policies WHERE policy_hash = ?)",
                    (policy_hash, policy.canonical_bytes().decode(), _now_us(), policy_hash),
                )
            ]
        )
        return policy_hash

    async def get_policy(self, policy_hash: str) -> PolicySnapshot | None:
        body = await self._scalar(
            self._read_connection(),
            "SELECT body FROM policies WHERE policy_hash = ?",
            (policy_hash,),
        )
        return None if body is None else PolicySnapshot.model_validate_json(body)

    async def list_policies(self) -> list[tuple[str, str]]:
        rows = await self._read_connection().execute_fetchall(
            "SELECT policy_hash, body FROM policies ORDER BY policy_hash"
        )
        return [(policy_hash, body) for policy_hash, body in rows]

    async def add_keys(self, verifier_keys: Sequence[str]) -> None:
        now = _now_us()
        sql = (
            "INSERT INTO signing_keys (verifier_key, added_at) SELECT ?, ? "
            "WHERE NOT EXISTS (SELECT 1 FROM signing_keys WHERE verifier_key = ?)"
        )
        if verifier_keys:
            await self._write([(sql, (key, now, key)) for key in verifier_keys])

    async def list_keys(self) -> list[str]:
        rows = await self._read_connection().execute_fetchall(
            "SELECT verifier_key FROM signing_keys ORDER BY added_at, verifier_key"
        )
        return [key for (key,) in rows]

    async def get_origin(self) -> str | None:
        value = await self._scalar(
            self._read_connection(), "SELECT value FROM ledger_meta WHERE key = 'origin'"
        )
        return None if value is None else str(value)

    async def set_origin(self, origin: str) -> None:
        await self._write(
            [
                (
                    "INSERT INTO ledger_meta (key, value) SELECT 'origin', ? "
                    "WHERE NOT EXISTS (SELECT 1 FROM ledger_meta WHERE key = 'origin')",
                    (origin,),
                )
            ]
        )
        stored = await self.get_origin()
        if stored != origin:
            raise LedgerError(
                f"ledger file {self.path} belongs to origin {stored!r}, not {origin!r}"
            )

    # -- checkpoints -----------------------------------------------------------------------

    async def save_checkpoint(self, record: CheckpointRecord) -> None:
        await self._write(
            [
                (
                    f"INSERT INTO checkpoints ({_CHECKPOINT_COLUMNS}) VALUES (?, ?, ?, ?, ?)",
                    (
                        record.index,
                        record.tree_size,
                        record.root,
                        record.note.decode(),
                        record.created_at,
                    ),
                )
            ]
        )

    async def list_checkpoints(self) -> list[CheckpointRecord]:
        rows = await self._read_connection().execute_fetchall(
            f"SELECT {_CHECKPOINT_COLUMNS} FROM checkpoints ORDER BY idx"
        )
        return [_checkpoint(values) for values in rows]

    async def last_checkpoint(self) -> CheckpointRecord | None:
        rows = list(
            await self._read_connection().execute_fetchall(
                f"SELECT {_CHECKPOINT_COLUMNS} FROM checkpoints ORDER BY idx DESC LIMIT 1"
            )
        )
        return _checkpoint(rows[0]) if rows else None
