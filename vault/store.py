"""The key store: one SQLite file holding wrapped DEKs, secret ciphertexts and tombstones.

Synchronous on purpose: every read is a local primary-key lookup taking microseconds. One
connection (`check_same_thread=False`) is shared by all threads and serialised by a re-entrant
lock; `transaction()` holds the lock for the whole BEGIN IMMEDIATE ... COMMIT, so a caller can
read, encrypt and write atomically.

Settings, and why:
- `secure_delete=ON`: SQLite overwrites deleted rows (and freed pages) with zeros instead of just
  unlinking them, so after an erase the bytes are gone from the pages without a VACUUM.
- WAL mode with `synchronous=FULL`: a committed erase survives a power loss. Because the WAL holds
  older page images (with the erased bytes), `checkpoint_truncate()` copies the zeroed pages into
  the main file and truncates the WAL to zero bytes.
- `temp_store=MEMORY`: sorts and temporary indexes never copy rows (subject ids, ciphertexts)
  into temporary files that no erase would reach.
- The file is created with mode 0600 (SQLite gives its -wal and -shm files the same mode).

Tables: schema_version, meta (the KEK id), subjects (subject, wrapped DEK, KEK id), secrets
(ref id, subject, nonce, ciphertext) and tombstones (ref id, SHA-256 of the subject, erasure
request id, time). Tombstones hold no raw subject id: it may itself be personal data.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from kernel.errors import SchemaVersionError
from vault.errors import KeyStoreError

SCHEMA_VERSION = 1
# purge_erased: how often, and how far apart, a checkpoint blocked by a reader is tried again.
PURGE_ATTEMPTS = 50
PURGE_RETRY_SECONDS = 0.01

_SCHEMA = """
CREATE TABLE schema_version (version INTEGER NOT NULL);
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE subjects (
    subject TEXT PRIMARY KEY,
    wrapped_dek BLOB NOT NULL,
    kek_id TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE secrets (
    ref_id TEXT PRIMARY KEY,
    subject TEXT NOT NULL REFERENCES subjects (subject),
    nonce BLOB NOT NULL,
    ciphertext BLOB NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX secrets_by_subject ON secrets (subject);
CREATE TABLE tombstones (
    ref_id TEXT PRIMARY KEY,
    subject_hash TEXT NOT NULL,
    request_id TEXT NOT NULL,
    erased_at TEXT NOT NULL
);
CREATE INDEX tombstones_by_subject ON tombstones (subject_hash);
"""


@dataclass(frozen=True, slots=True)
class SubjectKey:
    """A subject's wrapped DEK and the id of the KEK that wraps it."""

    subject: str
    wrapped_dek: bytes
    kek_id: str


@dataclass(frozen=True, slots=True)
class SecretRow:
    """A secret's ciphertext with its subject's wrapped DEK (read in one statement)."""

    ref_id: str
    subject: str
    nonce: bytes
    ciphertext: bytes
    wrapped_dek: bytes
    kek_id: str


# The key store's data tables in an order rows can be copied (a secret names its subject), with
# their columns: what `dump` gives and `load` takes. `meta` (the KEK id) is each store's own.
TABLE_COLUMNS: dict[str, tuple[str, ...]] = {
    "subjects": ("subject", "wrapped_dek", "kek_id", "created_at"),
    "secrets": ("ref_id", "subject", "nonce", "ciphertext", "created_at"),
    "tombstones": ("ref_id", "subject_hash", "request_id", "erased_at"),
}


class KeyStorage(Protocol):
    """What the `Vault` needs of a key store (SQLite here, PostgreSQL in
    `vault.postgres_store`). Synchronous: every call is a primary-key lookup or a small write.

    `lock` is held by every call; `transaction()` holds it for a whole write transaction.
    `add_subject` returns the key stored for the subject, which is another writer's if one
    stored it first, so that a secret is always sealed under the DEK that is kept.
    `erase_subject` tombstones exactly the secrets it deletes, atomically; `purge_erased`
    then removes what the store can of the erased bytes' older images."""

    lock: threading.RLock

    @property
    def path(self) -> Path | str: ...

    @property
    def closed(self) -> bool: ...

    def close(self) -> None: ...

    def transaction(self) -> AbstractContextManager[Any]: ...

    def purge_erased(self) -> None: ...

    def get_meta(self, key: str) -> str | None: ...

    def set_meta(self, key: str, value: str) -> None: ...

    def subject_key(self, subject: str) -> SubjectKey | None: ...

    def subject_keys(self) -> list[SubjectKey]: ...

    def add_subject(self, key: SubjectKey, created_at: str) -> SubjectKey: ...

    def rewrap_subject(self, key: SubjectKey) -> None: ...

    def add_secret(
        self, ref_id: str, subject: str, nonce: bytes, ciphertext: bytes, created_at: str
    ) -> None: ...

    def secret(self, ref_id: str) -> SecretRow | None: ...

    def ref_ids_of(self, subject: str) -> list[str]: ...

    def is_tombstoned(self, ref_id: str) -> bool: ...

    def erase_subject(
        self, subject: str, subject_hash: str, request_id: str, erased_at: str
    ) -> list[str]: ...

    def dump(self, table: str) -> list[tuple[Any, ...]]:
        """Every row of `table` (a key of TABLE_COLUMNS), in its columns' order."""
        ...

    def load(self, rows: Mapping[str, Sequence[tuple[Any, ...]]]) -> None:
        """Insert dumped rows (of a store under the same KEK) in one transaction."""
        ...


def _create_private(path: Path) -> None:
    """Create an empty file with mode 0600 unless it exists (an empty file is a valid empty db)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    except OSError as exc:
        raise KeyStoreError(f"cannot create key store {str(path)!r}: {exc.strerror}") from None
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


class KeyStore:
    """Low-level access to the key store file. Not a public API: the `Vault` drives it."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.lock = threading.RLock()
        self._db: sqlite3.Connection | None = None
        _create_private(self.path)
        # Tighten an existing file too: it holds wrapped keys and the subject ids.
        if stat.S_IMODE(self.path.stat().st_mode) & 0o077:
            os.chmod(self.path, 0o600)
        try:
            self._db = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=10.0
            )
            self._configure()
            self._check_schema()
        except sqlite3.DatabaseError as exc:
            self.close()
            raise KeyStoreError(f"{str(self.path)!r} is not a usable key store: {exc}") from None
        except BaseException:
            self.close()
            raise

    # -- connection -------------------------------------------------------------------------

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise KeyStoreError(f"key store {str(self.path)!r} is closed")
        return self._db

    def _configure(self) -> None:
        db = self.db
        db.execute("PRAGMA secure_delete = ON")
        if db.execute("PRAGMA secure_delete").fetchone()[0] != 1:
            raise KeyStoreError("this SQLite build cannot enable secure_delete")
        mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise KeyStoreError(f"cannot put key store {str(self.path)!r} in WAL mode ({mode})")
        db.execute("PRAGMA synchronous = FULL")
        db.execute("PRAGMA foreign_keys = ON")
        db.execute("PRAGMA temp_store = MEMORY")
        db.execute("PRAGMA trusted_schema = OFF")

    def _check_schema(self) -> None:
        with self.transaction() as db:
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if not tables:
                # Statement by statement: executescript() would COMMIT the open transaction.
                for statement in filter(str.strip, _SCHEMA.split(";")):
                    db.execute(statement)
                db.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
                return
            if "schema_version" not in tables:
                raise KeyStoreError(f"{str(self.path)!r} is an SQLite file but not a key store")
            row = db.execute("SELECT max(version) FROM schema_version").fetchone()
            version = row[0] if row else None
            if version != SCHEMA_VERSION:
                newer = isinstance(version, int) and version > SCHEMA_VERSION
                hint = "upgrade ledgerflow to open it" if newer else "it cannot be opened"
                raise SchemaVersionError(
                    f"key store {str(self.path)!r} has schema version {version}; this ledgerflow "
                    f"reads version {SCHEMA_VERSION}: {hint}",
                    found=version,
                    supported=SCHEMA_VERSION,
                )

    def close(self) -> None:
        with self.lock:
            if self._db is not None:
                self._db.close()  # the last connection to close checkpoints and removes the WAL
                self._db = None

    @property
    def closed(self) -> bool:
        return self._db is None

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """Hold the lock and a write transaction; commit on success, roll back on any error."""
        with self.lock:
            db = self.db
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def purge_erased(self) -> None:
        """Copy every WAL frame into the main file and truncate the WAL to zero bytes.

        Another connection's read snapshot can keep older frames alive for a moment (a vault
        in another process writing at the same time): the checkpoint is tried again for up to
        half a second, then fails loudly, since the caller must not report erased bytes as gone
        while they still sit in the WAL.
        """
        with self.lock:
            for _attempt in range(PURGE_ATTEMPTS):
                busy, _log, _done = self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
                if not busy:
                    return
                time.sleep(PURGE_RETRY_SECONDS)
            raise KeyStoreError(
                f"key store {str(self.path)!r}: another connection blocks the WAL checkpoint; "
                "the erase is committed but older page images remain in the -wal file "
                "until the next checkpoint"
            )

    # -- meta -------------------------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        with self.lock:
            row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
            return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        with self.lock:
            self.db.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    # -- subjects and secrets ---------------------------------------------------------------

    def subject_key(self, subject: str) -> SubjectKey | None:
        with self.lock:
            row = self.db.execute(
                "SELECT wrapped_dek, kek_id FROM subjects WHERE subject = ?", (subject,)
            ).fetchone()
            return None if row is None else SubjectKey(subject, bytes(row[0]), str(row[1]))

    def subject_keys(self) -> list[SubjectKey]:
        with self.lock:
            rows = self.db.execute("SELECT subject, wrapped_dek, kek_id FROM subjects").fetchall()
            return [SubjectKey(str(s), bytes(w), str(k)) for s, w, k in rows]

    def add_subject(self, key: SubjectKey, created_at: str) -> SubjectKey:
        with self.lock:
            self.db.execute(
                "INSERT INTO subjects (subject, wrapped_dek, kek_id, created_at) VALUES (?,?,?,?) "
                "ON CONFLICT (subject) DO NOTHING",
                (key.subject, key.wrapped_dek, key.kek_id, created_at),
            )
            stored = self.subject_key(key.subject)
        assert stored is not None
        return stored

    def rewrap_subject(self, key: SubjectKey) -> None:
        with self.lock:
            self.db.execute(
                "UPDATE subjects SET wrapped_dek = ?, kek_id = ? WHERE subject = ?",
                (key.wrapped_dek, key.kek_id, key.subject),
            )

    def add_secret(
        self, ref_id: str, subject: str, nonce: bytes, ciphertext: bytes, created_at: str
    ) -> None:
        with self.lock:
            self.db.execute(
                "INSERT INTO secrets (ref_id, subject, nonce, ciphertext, created_at) "
                "VALUES (?,?,?,?,?)",
                (ref_id, subject, nonce, ciphertext, created_at),
            )

    def secret(self, ref_id: str) -> SecretRow | None:
        """The secret and its subject's key, in one statement (one consistent snapshot)."""
        with self.lock:
            row = self.db.execute(
                "SELECT s.subject, s.nonce, s.ciphertext, k.wrapped_dek, k.kek_id "
                "FROM secrets AS s JOIN subjects AS k ON k.subject = s.subject "
                "WHERE s.ref_id = ?",
                (ref_id,),
            ).fetchone()
            if row is None:
                return None
            subject, nonce, ciphertext, wrapped, kek_id = row
            return SecretRow(
                ref_id, str(subject), bytes(nonce), bytes(ciphertext), bytes(wrapped), str(kek_id)
            )

    def ref_ids_of(self, subject: str) -> list[str]:
        with self.lock:
            rows = self.db.execute(
                "SELECT ref_id FROM secrets WHERE subject = ? ORDER BY created_at, ref_id",
                (subject,),
            ).fetchall()
            return [str(r[0]) for r in rows]

    def is_tombstoned(self, ref_id: str) -> bool:
        with self.lock:
            row = self.db.execute("SELECT 1 FROM tombstones WHERE ref_id = ?", (ref_id,))
            return row.fetchone() is not None

    # -- erasure ----------------------------------------------------------------------------

    def erase_subject(
        self, subject: str, subject_hash: str, request_id: str, erased_at: str
    ) -> list[str]:
        """Tombstone and delete every secret of `subject`, then its DEK, in one transaction.

        Returns the erased ref ids. With secure_delete the deleted cells and freed pages are
        zeroed in the new page images; run `checkpoint_truncate()` afterwards to drop the old
        images from the WAL.
        """
        with self.transaction() as db:
            ref_ids = [
                str(r[0])
                for r in db.execute(
                    "SELECT ref_id FROM secrets WHERE subject = ? ORDER BY ref_id", (subject,)
                )
            ]
            db.executemany(
                "INSERT INTO tombstones (ref_id, subject_hash, request_id, erased_at) "
                "VALUES (?,?,?,?)",
                [(ref_id, subject_hash, request_id, erased_at) for ref_id in ref_ids],
            )
            db.execute("DELETE FROM secrets WHERE subject = ?", (subject,))
            db.execute("DELETE FROM subjects WHERE subject = ?", (subject,))
            return ref_ids

    # -- copying ----------------------------------------------------------------------------

    def dump(self, table: str) -> list[tuple[Any, ...]]:
        columns = ", ".join(TABLE_COLUMNS[table])
        with self.lock:
            return [tuple(row) for row in self.db.execute(f"SELECT {columns} FROM {table}")]

    def load(self, rows: Mapping[str, Sequence[tuple[Any, ...]]]) -> None:
        with self.transaction() as db:
            for table, columns in TABLE_COLUMNS.items():
                marks = ",".join("?" * len(columns))
                sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})"
                db.executemany(sql, rows.get(table, ()))
