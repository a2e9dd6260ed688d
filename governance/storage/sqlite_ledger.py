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

Connections (`sqlite_connection.SqliteConnection`: its own thread, or the event loop's when
nothing else is ready there): writes go through one connection, serialised by a lock, each
batch in one `BEGIN IMMEDIATE ... COMMIT` handed over as one function. Reads use a second
connection (`query_only`), so a reader sees only committed envelopes. Long scans page by seq,
each page its own statement (the log is append-only, so pages are consistent).
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

from governance.envelope import GovernanceEnvelope
from governance.errors import ChainError, LedgerError
from governance.storage.database import ConstraintError, Executor, Row
from governance.storage.ledger_port import (
    EnvelopeRow,
    Statement,
    Synchronous,
    envelope_of,
    row_values,
)
from governance.storage.sql_ledger import ENVELOPE_COLUMNS, SqlLedgerStore
from governance.storage.sqlite_connection import SqliteConnection, in_one_transaction


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

_INSERT_ENVELOPES = f"INSERT INTO envelopes ({ENVELOPE_COLUMNS}) VALUES "
_ENVELOPE_PLACEHOLDERS = "(?,?,?,?,?,?,?,?,?,?,?)"
# 11 columns: 500 rows stay far below SQLite's limit of 32766 parameters per statement.
_ROWS_PER_STATEMENT = 500
_SIZE = "SELECT COALESCE(MAX(seq) + 1, 0) FROM envelopes"


class SqliteLedgerStore(SqlLedgerStore):
    """A `LedgerStore` in one SQLite file. Use one writing instance per file.

    `readonly=True` opens an existing file without creating, migrating or writing anything (for
    auditors); its write methods raise.
    """

    DIALECT = "sqlite"
    SCHEMA_VERSION = SCHEMA_VERSION
    MIGRATIONS = MIGRATIONS
    VERSION_TABLE = (
        "CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL) "
        "STRICT"
    )
    UNLIMITED = -1

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        synchronous: Synchronous = "FULL",
        busy_timeout_ms: int = 5000,
        readonly: bool = False,
    ) -> None:
        super().__init__(os.fspath(path), synchronous=synchronous, readonly=readonly)
        self.path = Path(path)
        self.busy_timeout_ms = busy_timeout_ms
        self._writer: SqliteConnection | None = None
        self._reader: SqliteConnection | None = None
        self._write_lock = asyncio.Lock()

    # -- lifecycle -------------------------------------------------------------------------
    async def open(self) -> None:
        if self._reader is not None:
            return
        if self.readonly:
            if not self.path.exists():
                raise LedgerError(f"ledger file {self.path} does not exist")
            uri = self.path.resolve().as_uri() + "?mode=ro"
            reader = self._connection(uri, uri=True, name="ledger-reader")
            await reader.open()
            try:
                for pragma in self._pragmas(query_only=True):
                    await reader.execute(pragma)
                self._check_version(await self._version(reader))
            except BaseException:
                await reader.close()
                raise
            self._reader = reader
            return
        writer = self._connection(self.path, name="ledger-writer")
        await writer.open()
        try:
            for pragma in self._pragmas(query_only=False):
                await writer.execute(pragma)
            [(mode,)] = await writer.fetch("PRAGMA journal_mode=WAL")
            if str(mode).lower() != "wal":
                raise LedgerError(f"{self.path}: SQLite refused WAL mode (journal_mode={mode})")
            await self._migrate(writer)
            reader = self._connection(self.path, name="ledger-reader")
            await reader.open()
        except BaseException:
            await writer.close()
            raise
        try:
            for pragma in self._pragmas(query_only=True):
                await reader.execute(pragma)
        except BaseException:
            await writer.close()
            await reader.close()
            raise
        self._writer, self._reader = writer, reader

    async def close(self) -> None:
        writer, reader = self._writer, self._reader
        self._writer = self._reader = None
        if reader is not None:
            await reader.close()
        if writer is not None:
            await writer.close()

    def _connection(self, where: str | Path, *, name: str, uri: bool = False) -> SqliteConnection:
        return SqliteConnection(where, busy_timeout_ms=self.busy_timeout_ms, uri=uri, name=name)

    def _pragmas(self, *, query_only: bool) -> list[str]:
        pragmas = [
            f"PRAGMA busy_timeout={int(self.busy_timeout_ms)}",
            f"PRAGMA synchronous={self.synchronous}",
        ]
        return [*pragmas, "PRAGMA query_only=ON"] if query_only else pragmas

    async def _version(self, connection: Executor) -> int:
        tables = {
            name
            for (name,) in await connection.fetch(
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
        row = await connection.fetchone("SELECT MAX(version) FROM schema_version")
        return int(row[0] or 0) if row is not None else 0

    async def _migrate(self, writer: SqliteConnection) -> None:
        # The version is read inside the write transaction: two processes never both migrate.
        await writer.execute("BEGIN IMMEDIATE")
        try:
            version = await self._version(writer)
            self._check_version(version)
            await self._apply_migrations(writer, version)
            await writer.execute("COMMIT")
        except BaseException:
            if writer.in_transaction:
                await writer.execute("ROLLBACK")
            raise

    def _write_connection(self) -> SqliteConnection:
        if self._writer is None:
            what = "read-only" if self.readonly else "not open"
            raise LedgerError(f"ledger store {self.path} is {what}: cannot write")
        return self._writer

    def _read_connection(self) -> SqliteConnection:
        if self._reader is None:
            raise LedgerError(f"ledger store {self.path} is not open")
        return self._reader

    async def _fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return await self._read_connection().fetch(sql, params)

    async def _write(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> None:
        # One round trip to the writer's thread: one statement in autocommit, or several in
        # one BEGIN IMMEDIATE ... COMMIT.
        if not statements:
            return
        writer = self._write_connection()
        async with self._write_lock:
            with _refusals(self.where):
                if len(statements) == 1:
                    await writer.execute(*statements[0])
                else:
                    await writer.call(in_one_transaction(statements))

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[Executor]:
        writer = self._write_connection()
        async with self._write_lock:
            with _refusals(self.where):
                # IMMEDIATE takes SQLite's write lock now: no other process can write between
                # this transaction's reads and its inserts.
                await writer.execute("BEGIN IMMEDIATE")
                try:
                    yield writer
                    await writer.execute("COMMIT")
                except BaseException:
                    if writer.in_transaction:
                        await writer.execute("ROLLBACK")
                    raise

    async def append_after(
        self,
        known_size: int,
        seal: Callable[[list[GovernanceEnvelope]], Sequence[GovernanceEnvelope]],
        also: Sequence[Statement] = (),
    ) -> tuple[list[GovernanceEnvelope], list[GovernanceEnvelope]]:
        # Sealed first, on the assumption that nobody else appended (one process per file is
        # the common case): the commit is then one round trip. When another process did, the
        # round trip brings back what it appended, and the batch is sealed again after it.
        writer = self._write_connection()
        newcomers: list[GovernanceEnvelope] = []
        sealed = list(seal(newcomers))
        async with self._write_lock:
            while True:
                with _refusals(self.where):
                    statements = [*self._insert_statements(sealed), *also]
                    rows = await writer.call(_commit_after(known_size, statements))
                if rows is None:
                    return newcomers, sealed
                arrived = [envelope_of(EnvelopeRow(*values)) for values in rows]
                newcomers += arrived
                known_size += len(arrived)
                sealed = list(seal(newcomers))

    async def _lock_head(self, tx: Executor) -> None:
        return None  # BEGIN IMMEDIATE holds the database's one write lock

    def _insert_statements(
        self, envelopes: Sequence[GovernanceEnvelope]
    ) -> list[tuple[str, Sequence[Any]]]:
        # Multi-row INSERTs: the triggers still check every row, in order, against the rows
        # before it (a test holds a bad row in the middle of a batch to a refusal of the whole).
        statements: list[tuple[str, Sequence[Any]]] = []
        for first in range(0, len(envelopes), _ROWS_PER_STATEMENT):
            chunk = envelopes[first : first + _ROWS_PER_STATEMENT]
            sql = _INSERT_ENVELOPES + ",".join([_ENVELOPE_PLACEHOLDERS] * len(chunk))
            statements.append((sql, [value for e in chunk for value in row_values(e)]))
        return statements

    def _insert_if_absent(
        self, table: str, key: str, values: dict[str, Any]
    ) -> tuple[str, Sequence[Any]]:
        # Not ON CONFLICT: the insert-once trigger refuses a present key before any conflict
        # resolution, and the write lock makes the check and the insert one step.
        columns = ", ".join(values)
        marks = ", ".join("?" * len(values))
        sql = (
            f"INSERT INTO {table} ({columns}) SELECT {marks} "
            f"WHERE NOT EXISTS (SELECT 1 FROM {table} WHERE {key} = ?)"
        )
        return sql, [*values.values(), values[key]]


def _commit_after(
    known_size: int, statements: Sequence[tuple[str, Sequence[Any]]]
) -> Callable[[sqlite3.Connection], list[Row] | None]:
    """On the writer's thread: commit `statements` if the log still holds `known_size`
    envelopes (None), else roll back and return the rows appended after them."""

    def run(connection: sqlite3.Connection) -> list[Row] | None:
        connection.execute("BEGIN IMMEDIATE")
        try:
            (size,) = connection.execute(
                "SELECT COALESCE(MAX(seq) + 1, 0) FROM envelopes"
            ).fetchone()
            if size != known_size:
                if size < known_size:
                    raise ChainError(
                        f"the store holds {size} envelopes, fewer than the {known_size} this "
                        "writer saw committed"
                    )
                rows = connection.execute(
                    f"SELECT {ENVELOPE_COLUMNS} FROM envelopes WHERE seq >= ? ORDER BY seq",
                    (known_size,),
                ).fetchall()
                connection.execute("ROLLBACK")
                return [tuple(row) for row in rows]
            for sql, params in statements:
                connection.execute(sql, params)
            connection.execute("COMMIT")
            return None
        except BaseException:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise

    return run


@contextmanager
def _refusals(where: str) -> Iterator[None]:
    """The schema's refusals (constraints, the append-only triggers) as ChainError."""
    try:
        yield
    except (sqlite3.IntegrityError, ConstraintError) as exc:
        raise ChainError(f"{where}: the store refused the write: {exc}") from exc
