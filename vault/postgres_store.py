"""The vault's key store in PostgreSQL, for instances that share one database: the same rows
as the SQLite key store, in tables `lf_vault_*` beside the ledger's.

Synchronous (psycopg), as the SQLite store: the vault is called from synchronous code (the
projection of a secret ref), and each call is one primary-key statement on a server that is
normally a millisecond away. One connection per store, in autocommit; `transaction()` holds the
lock and a server transaction.

Several instances writing at once:
- a subject's first two secrets, sealed by two instances together, end under one DEK: the
  second `add_subject` finds the first one's key and the vault seals under it;
- writes for a subject take a shared lock on it (a transaction advisory lock keyed by the
  subject) and `erase_subject` an exclusive one: a secret being added for that subject either
  commits before the erase (and is erased with the others), or waits for the erase and then
  goes under a new key, or fails on the foreign key if its key was erased in between; nothing
  is deleted without its tombstone.

What an erase leaves behind, unlike SQLite's `secure_delete`: PostgreSQL does not overwrite
deleted rows. Their old images stay in the table's pages until VACUUM reclaims the space and a
later write reuses it, in the server's WAL until its segments are recycled, and in base backups
and WAL archives for as long as those are kept. Every such copy holds only the ciphertext and
the DEK wrapped by the KEK, which is never in the database: the erasure of those copies rests
on the KEK staying out of the database's backups (run `VACUUM lf_vault_secrets,
lf_vault_subjects` to reclaim the space sooner; autovacuum does it eventually).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo

from kernel.errors import SchemaVersionError
from vault.errors import KeyStoreError
from vault.store import SCHEMA_VERSION, TABLE_COLUMNS, SecretRow, SubjectKey

PREFIX = "lf_vault_"
# The application role may read and write every one of them (erase deletes rows).
VAULT_TABLES = tuple(PREFIX + name for name in ("schema", "meta", *TABLE_COLUMNS))

_SCHEMA = (
    f"CREATE TABLE {PREFIX}schema (version INTEGER NOT NULL)",
    f"CREATE TABLE {PREFIX}meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    f"""CREATE TABLE {PREFIX}subjects (
        subject TEXT PRIMARY KEY,
        wrapped_dek BYTEA NOT NULL,
        kek_id TEXT NOT NULL,
        created_at TEXT NOT NULL
    )""",
    f"""CREATE TABLE {PREFIX}secrets (
        ref_id TEXT PRIMARY KEY,
        subject TEXT NOT NULL REFERENCES {PREFIX}subjects (subject),
        nonce BYTEA NOT NULL,
        ciphertext BYTEA NOT NULL,
        created_at TEXT NOT NULL
    )""",
    f"CREATE INDEX {PREFIX}secrets_by_subject ON {PREFIX}secrets (subject)",
    f"""CREATE TABLE {PREFIX}tombstones (
        ref_id TEXT PRIMARY KEY,
        subject_hash TEXT NOT NULL,
        request_id TEXT NOT NULL,
        erased_at TEXT NOT NULL
    )""",
    f"CREATE INDEX {PREFIX}tombstones_by_subject ON {PREFIX}tombstones (subject_hash)",
)


class PostgresKeyStore:
    """The key store in the database `dsn` (tables in `schema`, or the connection's default).
    `where` names it in messages (a URL without its password)."""

    def __init__(self, dsn: str, *, schema: str | None = None, where: str | None = None) -> None:
        self.path = where or "PostgreSQL key store"
        self.lock = threading.RLock()
        conninfo = make_conninfo(
            dsn,
            application_name="ledgerflow-vault",
            options=None if schema is None else f"-c search_path={schema}",
        )
        try:
            self._db: psycopg.Connection[tuple[Any, ...]] | None = psycopg.connect(
                conninfo, autocommit=True
            )
        except psycopg.Error as exc:
            raise KeyStoreError(f"cannot connect the key store to {self.path}: {exc}") from None
        try:
            self._check_schema()
        except BaseException:
            self.close()
            raise

    # -- connection ---------------------------------------------------------------------------

    @property
    def db(self) -> psycopg.Connection[tuple[Any, ...]]:
        if self._db is None:
            raise KeyStoreError(f"key store {self.path!r} is closed")
        return self._db

    @property
    def closed(self) -> bool:
        return self._db is None

    def close(self) -> None:
        with self.lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    @contextmanager
    def transaction(self) -> Iterator[psycopg.Connection[tuple[Any, ...]]]:
        """Hold the lock and a server transaction; commit on success, roll back on any error."""
        with self.lock, self.db.transaction():
            yield self.db

    def _check_schema(self) -> None:
        with self.transaction() as db:
            # Instances starting together: one creates the tables, the others find them (a read
            # of the catalog after the lock, not to_regclass, whose cache may predate it).
            db.execute("SELECT pg_advisory_xact_lock(hashtext(current_schema() || ':vault'))")
            found = db.execute(
                "SELECT EXISTS (SELECT FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n "
                "ON n.oid = c.relnamespace WHERE n.nspname = current_schema() AND c.relname = %s)",
                (f"{PREFIX}schema",),
            )
            row = found.fetchone()
            if not (row and row[0]):
                try:
                    for statement in _SCHEMA:
                        db.execute(statement)
                except psycopg.errors.InsufficientPrivilege:
                    raise KeyStoreError(
                        f"the key store in {self.path} does not exist and this role may not "
                        "create it: run `ledgerflow db init` as the owner role"
                    ) from None
                db.execute(f"INSERT INTO {PREFIX}schema VALUES (%s)", (SCHEMA_VERSION,))
                return
            version_row = db.execute(f"SELECT max(version) FROM {PREFIX}schema").fetchone()
            version = version_row[0] if version_row else None
            if version != SCHEMA_VERSION:
                newer = isinstance(version, int) and version > SCHEMA_VERSION
                hint = "upgrade ledgerflow to open it" if newer else "it cannot be opened"
                raise SchemaVersionError(
                    f"key store {self.path!r} has schema version {version}; this ledgerflow "
                    f"reads version {SCHEMA_VERSION}: {hint}",
                    found=version,
                    supported=SCHEMA_VERSION,
                )

    def _one(self, sql: str, params: Sequence[Any]) -> tuple[Any, ...] | None:
        with self.lock:
            return self.db.execute(sql, params).fetchone()

    def _all(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self.lock:
            return self.db.execute(sql, params).fetchall()

    def _run(self, sql: str, params: Sequence[Any]) -> None:
        with self.lock:
            self.db.execute(sql, params)

    def purge_erased(self) -> None:
        """Nothing the store can do at once: see the module docstring (VACUUM, WAL, backups)."""
        return None

    # -- meta -----------------------------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        row = self._one(f"SELECT value FROM {PREFIX}meta WHERE key = %s", (key,))
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        self._run(
            f"INSERT INTO {PREFIX}meta (key, value) VALUES (%s, %s) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    # -- subjects and secrets -------------------------------------------------------------------

    def subject_key(self, subject: str) -> SubjectKey | None:
        row = self._one(
            f"SELECT wrapped_dek, kek_id FROM {PREFIX}subjects WHERE subject = %s", (subject,)
        )
        return None if row is None else SubjectKey(subject, bytes(row[0]), str(row[1]))

    def subject_keys(self) -> list[SubjectKey]:
        rows = self._all(f"SELECT subject, wrapped_dek, kek_id FROM {PREFIX}subjects")
        return [SubjectKey(str(s), bytes(w), str(k)) for s, w, k in rows]

    def _lock_subject(self, subject: str, *, exclusive: bool = False) -> None:
        """Held until the transaction ends: writers share it, an erase holds it alone."""
        function = "pg_advisory_xact_lock" if exclusive else "pg_advisory_xact_lock_shared"
        self._run(f"SELECT {function}(hashtext('vault-subject:' || %s))", (subject,))

    def add_subject(self, key: SubjectKey, created_at: str) -> SubjectKey:
        with self.lock:
            self._lock_subject(key.subject)
            self._run(
                f"INSERT INTO {PREFIX}subjects (subject, wrapped_dek, kek_id, created_at) "
                "VALUES (%s, %s, %s, %s) ON CONFLICT (subject) DO NOTHING",
                (key.subject, key.wrapped_dek, key.kek_id, created_at),
            )
            stored = self.subject_key(key.subject)
        if stored is None:
            raise KeyStoreError(f"subject key of {self.path!r} vanished while it was added")
        return stored

    def rewrap_subject(self, key: SubjectKey) -> None:
        self._run(
            f"UPDATE {PREFIX}subjects SET wrapped_dek = %s, kek_id = %s WHERE subject = %s",
            (key.wrapped_dek, key.kek_id, key.subject),
        )

    def add_secret(
        self, ref_id: str, subject: str, nonce: bytes, ciphertext: bytes, created_at: str
    ) -> None:
        try:
            self._lock_subject(subject)
            self._run(
                f"INSERT INTO {PREFIX}secrets (ref_id, subject, nonce, ciphertext, created_at) "
                "VALUES (%s, %s, %s, %s, %s)",
                (ref_id, subject, nonce, ciphertext, created_at),
            )
        except psycopg.errors.ForeignKeyViolation:
            raise KeyStoreError(
                "the data subject was erased while a secret of theirs was being stored; "
                "nothing was stored"
            ) from None

    def secret(self, ref_id: str) -> SecretRow | None:
        row = self._one(
            f"SELECT s.subject, s.nonce, s.ciphertext, k.wrapped_dek, k.kek_id "
            f"FROM {PREFIX}secrets AS s JOIN {PREFIX}subjects AS k ON k.subject = s.subject "
            "WHERE s.ref_id = %s",
            (ref_id,),
        )
        if row is None:
            return None
        subject, nonce, ciphertext, wrapped, kek_id = row
        return SecretRow(
            ref_id, str(subject), bytes(nonce), bytes(ciphertext), bytes(wrapped), str(kek_id)
        )

    def ref_ids_of(self, subject: str) -> list[str]:
        rows = self._all(
            f"SELECT ref_id FROM {PREFIX}secrets WHERE subject = %s ORDER BY created_at, ref_id",
            (subject,),
        )
        return [str(r[0]) for r in rows]

    def is_tombstoned(self, ref_id: str) -> bool:
        return (
            self._one(f"SELECT 1 FROM {PREFIX}tombstones WHERE ref_id = %s", (ref_id,)) is not None
        )

    # -- erasure --------------------------------------------------------------------------------

    def erase_subject(
        self, subject: str, subject_hash: str, request_id: str, erased_at: str
    ) -> list[str]:
        """Tombstone and delete every secret of `subject`, then its DEK, in one transaction."""
        with self.transaction() as db:
            self._lock_subject(subject, exclusive=True)  # waits for writes under way to commit
            deleted = db.execute(
                f"DELETE FROM {PREFIX}secrets WHERE subject = %s RETURNING ref_id", (subject,)
            ).fetchall()
            ref_ids = sorted(str(row[0]) for row in deleted)
            with db.cursor() as cursor:
                cursor.executemany(
                    f"INSERT INTO {PREFIX}tombstones (ref_id, subject_hash, request_id, erased_at) "
                    "VALUES (%s, %s, %s, %s)",
                    [(ref_id, subject_hash, request_id, erased_at) for ref_id in ref_ids],
                )
            db.execute(f"DELETE FROM {PREFIX}subjects WHERE subject = %s", (subject,))
            return ref_ids

    # -- copying --------------------------------------------------------------------------------

    def dump(self, table: str) -> list[tuple[Any, ...]]:
        columns = ", ".join(TABLE_COLUMNS[table])
        return [
            tuple(bytes(v) if isinstance(v, memoryview) else v for v in row)
            for row in self._all(f"SELECT {columns} FROM {PREFIX}{table}")
        ]

    def load(self, rows: Mapping[str, Sequence[tuple[Any, ...]]]) -> None:
        with self.transaction() as db, db.cursor() as cursor:
            for table, columns in TABLE_COLUMNS.items():
                marks = ", ".join(["%s"] * len(columns))
                cursor.executemany(
                    f"INSERT INTO {PREFIX}{table} ({', '.join(columns)}) VALUES ({marks})",
                    rows.get(table, ()),
                )
