"""The PostgreSQL `LedgerStore`: the same tables, rules and answers as the SQLite store, for
ledgers shared by several gateway instances (processes on one or more hosts).

The chain head is serialised across every connection, process and host by one transaction
advisory lock (`lf_ledger_lock()`, keyed by the envelopes table, so two ledgers in two schemas
never wait on each other). `append_after` takes it first, then reads what other instances
appended since it last looked, seals its batch after the true head and inserts it: appends from
many instances interleave into one gapless chain, and each instance's group commit still puts
all of its waiting envelopes in one transaction.

Append-only, enforced by the server itself, for any client:
- `envelopes`: a BEFORE INSERT row trigger takes the same lock and refuses a seq that is not
  `max(seq) + 1` (0 when empty) or a `prev_hash` that is not the last entry hash (32 zero bytes
  when empty); BEFORE UPDATE / DELETE row triggers and a BEFORE TRUNCATE statement trigger
  refuse every change;
- `checkpoints`: the next index only, growing, covering only stored envelopes; never changed;
- `policies`, `signing_keys`, `ledger_meta`, `schema_version`: written once, never changed.
A second line of defence: `ledgerflow db init` grants the application role only SELECT and
INSERT on these tables. The owner of the tables (or a superuser) can still disable the
triggers or rewrite the rows: that is what `governance.verify` and the signed checkpoints are
for, and why the owner's credentials belong to no running instance.

Times are integer microseconds (BIGINT); hashes BYTEA of 32 bytes; payloads TEXT holding the
exact canonical bytes that were hashed (JSONB would reorder and renormalise them).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import contextmanager
from types import TracebackType
from typing import Any

import asyncpg

from governance.database_url import DatabaseUrl
from governance.envelope import GovernanceEnvelope
from governance.errors import ChainError, LedgerError
from governance.policy import PolicySnapshot
from governance.postgres import TABLE_EXISTS, Connection, create_pool, ensure_schema, lock_for_ddl
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
_REFUSED = "ERRCODE = 'integrity_constraint_violation'"
_ZERO_HASH = "decode(repeat('00', 32), 'hex')"
# The tables of the chain and their keys: the application role gets SELECT and INSERT only.
LEDGER_TABLES = (
    "schema_version",
    "ledger_meta",
    "policies",
    "signing_keys",
    "envelopes",
    "checkpoints",
)


def _append_only(table: str) -> tuple[str, ...]:
    return (
        f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
        "FOR EACH ROW EXECUTE FUNCTION lf_append_only()",
        f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
        "FOR EACH STATEMENT EXECUTE FUNCTION lf_append_only()",
    )


_V1: tuple[str, ...] = (
    """CREATE TABLE ledger_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)""",
    """CREATE TABLE policies (
        policy_hash TEXT PRIMARY KEY CHECK (length(policy_hash) = 64),
        body TEXT NOT NULL,
        created_at BIGINT NOT NULL
    )""",
    """CREATE TABLE signing_keys (verifier_key TEXT PRIMARY KEY, added_at BIGINT NOT NULL)""",
    """CREATE TABLE envelopes (
        seq BIGINT PRIMARY KEY CHECK (seq >= 0),
        execution_id TEXT NOT NULL,
        step_id TEXT,
        kind TEXT NOT NULL,
        status TEXT,
        policy_hash TEXT NOT NULL,
        canonical_snapshot_hash TEXT,
        payload TEXT NOT NULL,
        recorded_at BIGINT NOT NULL,
        prev_hash BYTEA NOT NULL CHECK (length(prev_hash) = 32),
        entry_hash BYTEA NOT NULL CHECK (length(entry_hash) = 32)
    )""",
    "CREATE INDEX envelopes_by_execution ON envelopes (execution_id, seq)",
    "CREATE INDEX envelopes_by_time ON envelopes (recorded_at)",
    "CREATE INDEX envelopes_by_policy ON envelopes (policy_hash, seq)",
    "CREATE INDEX envelopes_by_kind ON envelopes (kind, seq)",
    """CREATE TABLE checkpoints (
        idx BIGINT PRIMARY KEY CHECK (idx >= 0),
        tree_size BIGINT NOT NULL CHECK (tree_size >= 1),
        root BYTEA NOT NULL CHECK (length(root) = 32),
        note TEXT NOT NULL,
        created_at BIGINT NOT NULL
    )""",
    # search_path is pinned to the ledger's schema, so the functions find its tables (and
    # nothing a caller's search_path would put first).
    """CREATE FUNCTION lf_ledger_lock() RETURNS void LANGUAGE plpgsql
        SET search_path FROM CURRENT AS $$
    BEGIN
        PERFORM pg_advisory_xact_lock(19526, 'envelopes'::regclass::oid::integer);
    END $$""",
    f"""CREATE FUNCTION lf_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION 'ledger: % is append-only: % refused', TG_TABLE_NAME, TG_OP
            USING {_REFUSED};
    END $$""",
    f"""CREATE FUNCTION lf_envelopes_chain() RETURNS trigger LANGUAGE plpgsql
        SET search_path FROM CURRENT AS $$
    DECLARE
        last_seq BIGINT;
        last_hash BYTEA;
    BEGIN
        PERFORM lf_ledger_lock();
        SELECT seq, entry_hash INTO last_seq, last_hash FROM envelopes ORDER BY seq DESC LIMIT 1;
        IF NEW.seq IS DISTINCT FROM coalesce(last_seq + 1, 0) THEN
            RAISE EXCEPTION 'ledger: envelope seq must be max(seq) + 1 (0 when empty): got %, '
                'expected %', NEW.seq, coalesce(last_seq + 1, 0) USING {_REFUSED};
        END IF;
        IF NEW.prev_hash IS DISTINCT FROM coalesce(last_hash, {_ZERO_HASH}) THEN
            RAISE EXCEPTION 'ledger: envelope prev_hash must be the entry_hash of the last one '
                '(seq %)', NEW.seq USING {_REFUSED};
        END IF;
        RETURN NEW;
    END $$""",
    "CREATE TRIGGER envelopes_chain BEFORE INSERT ON envelopes "
    "FOR EACH ROW EXECUTE FUNCTION lf_envelopes_chain()",
    f"""CREATE FUNCTION lf_checkpoints_chain() RETURNS trigger LANGUAGE plpgsql
        SET search_path FROM CURRENT AS $$
    DECLARE
        last_idx BIGINT;
        last_size BIGINT;
    BEGIN
        PERFORM lf_ledger_lock();
        SELECT idx, tree_size INTO last_idx, last_size FROM checkpoints ORDER BY idx DESC LIMIT 1;
        IF NEW.idx IS DISTINCT FROM coalesce(last_idx + 1, 0) THEN
            RAISE EXCEPTION 'ledger: checkpoint idx must be max(idx) + 1 (0 when empty)'
                USING {_REFUSED};
        END IF;
        IF NEW.tree_size <= coalesce(last_size, 0) THEN
            RAISE EXCEPTION 'ledger: a checkpoint must cover more entries than the last one'
                USING {_REFUSED};
        END IF;
        IF NEW.tree_size > (SELECT coalesce(max(seq) + 1, 0) FROM envelopes) THEN
            RAISE EXCEPTION 'ledger: a checkpoint cannot cover envelopes that are not stored'
                USING {_REFUSED};
        END IF;
        RETURN NEW;
    END $$""",
    "CREATE TRIGGER checkpoints_chain BEFORE INSERT ON checkpoints "
    "FOR EACH ROW EXECUTE FUNCTION lf_checkpoints_chain()",
    *(statement for table in LEDGER_TABLES for statement in _append_only(table)),
)

MIGRATIONS: tuple[tuple[int, tuple[str, ...]], ...] = ((1, _V1),)
SCHEMA_VERSION = MIGRATIONS[-1][0]

_ENVELOPE_COLUMNS = (
    "seq, execution_id, step_id, kind, status, policy_hash, canonical_snapshot_hash, payload, "
    "recorded_at, prev_hash, entry_hash"
)
_ENVELOPE_TYPES = (
    "bigint",
    "text",
    "text",
    "text",
    "text",
    "text",
    "text",
    "text",
    "bigint",
    "bytea",
    "bytea",
)
# One statement for a whole batch, in seq order (the chain trigger checks each row against the
# rows before it).
_INSERT_ENVELOPES = (
    f"INSERT INTO envelopes ({_ENVELOPE_COLUMNS}) SELECT {_ENVELOPE_COLUMNS} FROM unnest("
    + ", ".join(f"${i}::{kind}[]" for i, kind in enumerate(_ENVELOPE_TYPES, 1))
    + f") WITH ORDINALITY AS batch({_ENVELOPE_COLUMNS}, position) ORDER BY position"
)
_CHECKPOINT_COLUMNS = "idx, tree_size, root, note, created_at"


def _now_us() -> int:
    return time.time_ns() // 1000


def _row(record: asyncpg.Record) -> EnvelopeRow:
    return EnvelopeRow(*record)


def _checkpoint(record: asyncpg.Record) -> CheckpointRecord:
    index, size, root, note, created_at = record
    return CheckpointRecord(index, size, bytes(root), note.encode(), created_at)


class PostgresLedgerStore:
    """A `LedgerStore` in a PostgreSQL database (or one schema of it). Any number of instances,
    in any number of processes, may write to one ledger at once.

    Give a `url` to let the store make (and close) its own pool, or a `pool` it shares with the
    run index and the other tables of the process (the caller closes it). `readonly=True`
    creates nothing, migrates nothing and writes nothing: its pool should be made read-only
    (`create_pool(readonly=True)`), as the store's own is.
    """

    def __init__(
        self,
        url: DatabaseUrl | str,
        *,
        synchronous: Synchronous = "FULL",
        readonly: bool = False,
        pool: asyncpg.Pool | None = None,
    ) -> None:
        if synchronous not in ("FULL", "NORMAL"):
            raise ValueError(f"synchronous must be 'FULL' or 'NORMAL', got {synchronous!r}")
        self.url = url if isinstance(url, DatabaseUrl) else DatabaseUrl.parse(url)
        if not self.url.is_postgres:
            raise ValueError(f"{self.url} is not a postgresql:// URL")
        self.synchronous: Synchronous = synchronous
        self.readonly = readonly
        self._given_pool = pool
        self._pool: asyncpg.Pool | None = None

    @property
    def path(self) -> str:
        """Where the ledger is (no password), as messages name it."""
        return str(self.url)

    async def __aenter__(self) -> PostgresLedgerStore:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def open(self) -> None:
        if self._pool is not None:
            return
        pool = self._given_pool
        if pool is None:
            pool = await create_pool(
                self.url, synchronous=self.synchronous, readonly=self.readonly, max_size=4
            )
        try:
            if self.readonly:
                await self._check_version(await self._version(pool))
            else:
                await ensure_schema(pool, self.url)
                await self._migrate(pool)
        except BaseException:
            if self._given_pool is None:
                await pool.close()
            raise
        self._pool = pool

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None and self._given_pool is None:
            await pool.close()

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise LedgerError(f"ledger store {self.path} is not open")
        return self._pool

    # -- schema --------------------------------------------------------------------------------

    async def _version(self, connection: asyncpg.Pool | Connection) -> int:
        if not await connection.fetchval(TABLE_EXISTS, "schema_version"):
            if await connection.fetchval(TABLE_EXISTS, "envelopes"):
                raise LedgerError(
                    f"{self.path} has an envelopes table but no schema_version table: it is not "
                    "a ledgerflow ledger"
                )
            if self.readonly:
                raise LedgerError(f"{self.path} holds no ledger (no ledgerflow tables)")
            return 0
        return int(
            await connection.fetchval("SELECT coalesce(max(version), 0) FROM schema_version")
        )

    async def _check_version(self, version: int) -> None:
        if version > SCHEMA_VERSION:
            raise SchemaVersionError(
                f"ledger {self.path} has schema version {version}, newer than version "
                f"{SCHEMA_VERSION} which this ledgerflow supports: upgrade ledgerflow to open it",
                found=version,
                supported=SCHEMA_VERSION,
            )
        if self.readonly and version < SCHEMA_VERSION:
            raise SchemaVersionError(
                f"ledger {self.path} has schema version {version}, older than "
                f"{SCHEMA_VERSION}: open it once for writing to migrate it",
                found=version,
                supported=SCHEMA_VERSION,
            )

    async def _migrate(self, pool: asyncpg.Pool) -> None:
        version = await self._version(pool)
        await self._check_version(version)
        if version == SCHEMA_VERSION:
            return  # nothing to create: a role that may only read and insert opens it too
        async with pool.acquire() as connection, connection.transaction():
            # Instances starting together: one migrates, the others then find it done.
            await lock_for_ddl(connection, "ledger-schema")
            version = await self._version(connection)
            await self._check_version(version)
            try:
                if version == 0:
                    await connection.execute(
                        "CREATE TABLE schema_version (version INTEGER PRIMARY KEY, "
                        "applied_at BIGINT NOT NULL)"
                    )
                for number, statements in MIGRATIONS:
                    if number <= version:
                        continue
                    for statement in statements:
                        await connection.execute(statement)
                    await connection.execute(
                        "INSERT INTO schema_version (version, applied_at) VALUES ($1, $2)",
                        number,
                        _now_us(),
                    )
            except asyncpg.InsufficientPrivilegeError as exc:
                raise LedgerError(
                    f"ledger {self.path} is at schema version {version} and this role may not "
                    f"create the ledger's tables ({exc}); run `ledgerflow db init` as the owner"
                ) from None

    # -- writing ---------------------------------------------------------------------------------

    def _writable(self) -> asyncpg.Pool:
        if self.readonly:
            raise LedgerError(f"ledger store {self.path} is read-only: cannot write")
        return self.pool

    async def _write(self, sql: str, *params: Any) -> None:
        """One statement in its own transaction."""
        pool = self._writable()
        with _refusals(self.path):
            await pool.execute(sql, *params)

    async def _insert(self, connection: Connection, envelopes: Sequence[Any]) -> None:
        columns = list(zip(*(row_values(e) for e in envelopes), strict=True))
        await connection.execute(_INSERT_ENVELOPES, *columns)

    async def append_batch(self, envelopes: Sequence[GovernanceEnvelope]) -> None:
        if not envelopes:
            return
        async with self._writable().acquire() as connection:
            with _refusals(self.path):
                async with connection.transaction():
                    await connection.execute("SELECT lf_ledger_lock()")
                    await self._insert(connection, envelopes)

    async def append_after(
        self,
        known_size: int,
        seal: Callable[[list[GovernanceEnvelope]], Sequence[GovernanceEnvelope]],
    ) -> tuple[list[GovernanceEnvelope], list[GovernanceEnvelope]]:
        async with self._writable().acquire() as connection:
            with _refusals(self.path):
                async with connection.transaction():
                    # Under the lock no other instance can append between reading the head and
                    # inserting after it; READ COMMITTED lets the next statement see every
                    # append committed before the lock was granted.
                    await connection.execute("SELECT lf_ledger_lock()")
                    rows = await connection.fetch(
                        f"SELECT {_ENVELOPE_COLUMNS} FROM envelopes WHERE seq >= $1 ORDER BY seq",
                        known_size,
                    )
                    newcomers = [envelope_of(_row(row)) for row in rows]
                    sealed = list(seal(newcomers))
                    if sealed:
                        await self._insert(connection, sealed)
        return newcomers, sealed

    async def put_policy(self, policy: PolicySnapshot) -> str:
        policy_hash = policy.policy_hash
        await self._write(
            "INSERT INTO policies (policy_hash, body, created_at) VALUES ($1, $2, $3) "
            "ON CONFLICT (policy_hash) DO NOTHING",
            policy_hash,
            policy.canonical_bytes().decode(),
            _now_us(),
        )
        return policy_hash

    async def add_keys(self, verifier_keys: Sequence[str]) -> None:
        if not verifier_keys:
            return
        now = _now_us()
        async with self._writable().acquire() as connection:
            with _refusals(self.path):
                await connection.executemany(
                    "INSERT INTO signing_keys (verifier_key, added_at) VALUES ($1, $2) "
                    "ON CONFLICT (verifier_key) DO NOTHING",
                    [(key, now) for key in verifier_keys],
                )

    async def set_origin(self, origin: str) -> None:
        await self._write(
            "INSERT INTO ledger_meta (key, value) VALUES ('origin', $1) "
            "ON CONFLICT (key) DO NOTHING",
            origin,
        )
        stored = await self.get_origin()
        if stored != origin:
            raise LedgerError(f"ledger {self.path} belongs to origin {stored!r}, not {origin!r}")

    async def save_checkpoint(self, record: CheckpointRecord) -> None:
        await self._write(
            f"INSERT INTO checkpoints ({_CHECKPOINT_COLUMNS}) VALUES ($1, $2, $3, $4, $5)",
            record.index,
            record.tree_size,
            record.root,
            record.note.decode(),
            record.created_at,
        )

    # -- reading ---------------------------------------------------------------------------------

    async def head(self) -> GovernanceEnvelope | None:
        row = await self.pool.fetchrow(
            f"SELECT {_ENVELOPE_COLUMNS} FROM envelopes ORDER BY seq DESC LIMIT 1"
        )
        return None if row is None else envelope_of(_row(row))

    async def read_range(self, start: int, stop: int) -> list[GovernanceEnvelope]:
        return [envelope_of(row) async for row in self.scan(start, stop)]

    async def scan(self, start: int = 0, stop: int | None = None) -> AsyncIterator[EnvelopeRow]:
        async for page in self._pages(_ENVELOPE_COLUMNS, start, stop, _PAGE):
            for record in page:
                yield _row(record)

    async def entry_hashes(self, start: int = 0, stop: int | None = None) -> AsyncIterator[bytes]:
        async for page in self._pages("seq, entry_hash", start, stop, 10 * _PAGE):
            for record in page:
                yield bytes(record[1])

    async def _pages(
        self, columns: str, start: int, stop: int | None, size: int
    ) -> AsyncIterator[list[asyncpg.Record]]:
        """Rows with start <= seq (< stop), a page (one statement) at a time; the log only
        grows, so pages by seq are consistent."""
        bound = "" if stop is None else " AND seq < $3"
        sql = f"SELECT {columns} FROM envelopes WHERE seq >= $1{bound} ORDER BY seq LIMIT $2"
        position = start
        while True:
            params = (position, size) if stop is None else (position, size, stop)
            page = await self.pool.fetch(sql, *params)
            if page:
                yield page
            if len(page) < size:
                return
            position = page[-1][0] + 1

    async def query(self, query: EnvelopeQuery) -> list[GovernanceEnvelope]:
        clauses: list[str] = []
        params: list[Any] = []
        for column, operator, value in query.conditions():
            params.append(value)
            clauses.append(f"{column} {operator} ${len(params)}")
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        params += [query.limit, query.offset]
        rows = await self.pool.fetch(
            f"SELECT {_ENVELOPE_COLUMNS} FROM envelopes{where} ORDER BY seq "
            f"LIMIT ${len(params) - 1} OFFSET ${len(params)}",
            *params,
        )
        return [envelope_of(_row(row)) for row in rows]

    async def get_policy(self, policy_hash: str) -> PolicySnapshot | None:
        body = await self.pool.fetchval(
            "SELECT body FROM policies WHERE policy_hash = $1", policy_hash
        )
        return None if body is None else PolicySnapshot.model_validate_json(body)

    async def list_policies(self) -> list[tuple[str, str]]:
        rows = await self.pool.fetch("SELECT policy_hash, body FROM policies ORDER BY policy_hash")
        return [(policy_hash, body) for policy_hash, body in rows]

    async def list_keys(self) -> list[str]:
        rows = await self.pool.fetch(
            "SELECT verifier_key FROM signing_keys ORDER BY added_at, verifier_key"
        )
        return [key for (key,) in rows]

    async def get_origin(self) -> str | None:
        value = await self.pool.fetchval("SELECT value FROM ledger_meta WHERE key = 'origin'")
        return None if value is None else str(value)

    async def list_checkpoints(self) -> list[CheckpointRecord]:
        rows = await self.pool.fetch(f"SELECT {_CHECKPOINT_COLUMNS} FROM checkpoints ORDER BY idx")
        return [_checkpoint(row) for row in rows]

    async def last_checkpoint(self) -> CheckpointRecord | None:
        row = await self.pool.fetchrow(
            f"SELECT {_CHECKPOINT_COLUMNS} FROM checkpoints ORDER BY idx DESC LIMIT 1"
        )
        return None if row is None else _checkpoint(row)


@contextmanager
def _refusals(where: str) -> Iterator[None]:
    """The server's refusals (constraints, the chain triggers) as ChainError; a write the role
    may not make, or a read-only connection, as LedgerError."""
    try:
        yield
    except asyncpg.IntegrityConstraintViolationError as exc:
        raise ChainError(f"{where}: the store refused the write: {exc}") from exc
    except asyncpg.InsufficientPrivilegeError as exc:
        raise LedgerError(f"{where}: this role may not write the ledger: {exc}") from exc
    except asyncpg.ReadOnlySQLTransactionError as exc:
        raise LedgerError(f"{where} is opened read-only: {exc}") from exc
