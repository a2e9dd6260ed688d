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

from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import asyncpg

from governance.envelope import GovernanceEnvelope
from governance.errors import ChainError, LedgerError
from governance.storage.database import ConstraintError, Executor, PrivilegeError, Row
from governance.storage.database_url import DatabaseUrl
from governance.storage.ledger_port import Synchronous, row_values
from governance.storage.postgres_database import (
    TABLE_EXISTS,
    Connection,
    PostgresExecutor,
    create_pool,
    ensure_schema,
    lock_for_ddl,
    numbered,
)
from governance.storage.sql_ledger import ENVELOPE_COLUMNS, SqlLedgerStore

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
    f"INSERT INTO envelopes ({ENVELOPE_COLUMNS}) SELECT {ENVELOPE_COLUMNS} FROM unnest("
    + ", ".join(f"?::{kind}[]" for kind in _ENVELOPE_TYPES)
    + f") WITH ORDINALITY AS batch({ENVELOPE_COLUMNS}, position) ORDER BY position"
)


class PostgresLedgerStore(SqlLedgerStore):
    """A `LedgerStore` in a PostgreSQL database (or one schema of it). Any number of instances,
    in any number of processes, may write to one ledger at once.

    Give a `url` to let the store make (and close) its own pool, or a `pool` it shares with the
    run index and the other tables of the process (the caller closes it). `readonly=True`
    creates nothing, migrates nothing and writes nothing: its pool should be made read-only
    (`create_pool(readonly=True)`), as the store's own is.
    """

    DIALECT = "postgresql"
    SCHEMA_VERSION = SCHEMA_VERSION
    MIGRATIONS = MIGRATIONS
    VERSION_TABLE = (
        "CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at BIGINT NOT NULL)"
    )
    UNLIMITED = None

    def __init__(
        self,
        url: DatabaseUrl | str,
        *,
        synchronous: Synchronous = "FULL",
        readonly: bool = False,
        pool: asyncpg.Pool | None = None,
    ) -> None:
        self.url = url if isinstance(url, DatabaseUrl) else DatabaseUrl.parse(url)
        if not self.url.is_postgres:
            raise ValueError(f"{self.url} is not a postgresql:// URL")
        super().__init__(str(self.url), synchronous=synchronous, readonly=readonly)
        self._given_pool = pool
        self._pool: asyncpg.Pool | None = None
        self._numbered: dict[str, str] = {}  # statement texts with $n placeholders

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
                self._check_version(await self._version(pool))
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
            raise LedgerError(f"ledger store {self.where} is not open")
        return self._pool

    # -- schema --------------------------------------------------------------------------------

    async def _version(self, connection: asyncpg.Pool | Connection) -> int:
        if not await connection.fetchval(TABLE_EXISTS, "schema_version"):
            if await connection.fetchval(TABLE_EXISTS, "envelopes"):
                raise LedgerError(
                    f"{self.where} has an envelopes table but no schema_version table: it is not "
                    "a ledgerflow ledger"
                )
            if self.readonly:
                raise LedgerError(f"{self.where} holds no ledger (no ledgerflow tables)")
            return 0
        return int(
            await connection.fetchval("SELECT coalesce(max(version), 0) FROM schema_version")
        )

    async def _migrate(self, pool: asyncpg.Pool) -> None:
        version = await self._version(pool)
        self._check_version(version)
        if version == SCHEMA_VERSION:
            return  # nothing to create: a role that may only read and insert opens it too
        async with pool.acquire() as connection, connection.transaction():
            # Instances starting together: one migrates, the others then find it done.
            await lock_for_ddl(connection, "ledger-schema")
            version = await self._version(connection)
            self._check_version(version)
            try:
                await self._apply_migrations(PostgresExecutor(connection, self._numbered), version)
            except PrivilegeError as exc:
                raise LedgerError(
                    f"ledger {self.where} is at schema version {version} and this role may not "
                    f"create the ledger's tables ({exc}); run `ledgerflow db init` as the owner"
                ) from None

    # -- writing ---------------------------------------------------------------------------------

    def _writable(self) -> asyncpg.Pool:
        if self.readonly:
            raise LedgerError(f"ledger store {self.where} is read-only: cannot write")
        return self.pool

    def _sql(self, sql: str) -> str:
        translated = self._numbered.get(sql)
        if translated is None:
            translated = self._numbered[sql] = numbered(sql)
        return translated

    async def _fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return [tuple(record) for record in await self.pool.fetch(self._sql(sql), *params)]

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[Executor]:
        async with self._writable().acquire() as connection:
            with _refusals(self.where):
                async with connection.transaction():
                    yield PostgresExecutor(connection, self._numbered)

    async def _lock_head(self, tx: Executor) -> None:
        await tx.execute("SELECT lf_ledger_lock()")

    def _insert_statements(
        self, envelopes: Sequence[GovernanceEnvelope]
    ) -> list[tuple[str, Sequence[Any]]]:
        # One statement for the whole batch, one array per column, in seq order (the chain
        # trigger checks each row against the rows before it).
        if not envelopes:
            return []
        columns = list(zip(*(row_values(e) for e in envelopes), strict=True))
        return [(_INSERT_ENVELOPES, columns)]

    def _insert_if_absent(
        self, table: str, key: str, values: dict[str, Any]
    ) -> tuple[str, Sequence[Any]]:
        columns = ", ".join(values)
        marks = ", ".join("?" * len(values))
        sql = f"INSERT INTO {table} ({columns}) VALUES ({marks}) ON CONFLICT ({key}) DO NOTHING"
        return sql, list(values.values())


@contextmanager
def _refusals(where: str) -> Iterator[None]:
    """The server's refusals (constraints, the chain triggers) as ChainError; a write the role
    may not make, or a read-only connection, as LedgerError."""
    try:
        yield
    except (asyncpg.IntegrityConstraintViolationError, ConstraintError) as exc:
        raise ChainError(f"{where}: the store refused the write: {exc}") from exc
    except (asyncpg.InsufficientPrivilegeError, PrivilegeError) as exc:
        raise LedgerError(f"{where}: this role may not write the ledger: {exc}") from exc
    except asyncpg.ReadOnlySQLTransactionError as exc:
        raise LedgerError(f"{where} is opened read-only: {exc}") from exc
