"""The Vault: secrets encrypted per subject, resolvable by ref, erasable by subject.

Guarantees:
- A value is stored only as AES-256-GCM ciphertext under its subject's data key (DEK); the DEK is
  stored only wrapped by the KEK, which never touches the key store.
- `resolve` returns the value exactly as `canonical_json` maps it to JSON (a tuple comes back as
  a list, a Decimal as its string), or raises: SecretError for an unknown ref, SecretError with
  `tombstoned=True` for an erased one, TamperedError for a row that fails authentication.
- `erase(subject)` deletes the subject's DEK and ciphertexts and records tombstones in one
  transaction, then truncates the WAL: afterwards none of those bytes remain in the key store's
  files (see `KeyStore`), and a copy taken earlier (a backup) is unreadable without the DEK.
- The commitment salt is encrypted with the value, so an erased secret's commitment can no longer
  be recomputed, even for a guessable value.
- Thread-safe: every operation holds the key store's lock for its whole duration.

Not guaranteed: bytes the OS or the disk keep outside the files (old filesystem blocks, SSD
remapping, swap) and copies Python made in memory; crypto-shredding is the defence there as long
as the wrapped DEK is gone everywhere too (rotate the KEK after restoring an old backup).
"""

from __future__ import annotations

import hashlib
import os
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from kernel.canonical import canonical_json
from kernel.capability import CapabilityRef, SecretError, commitment
from kernel.clock import Clock, SystemClock
from vault import crypto
from vault.errors import VaultError, WrongKekError
from vault.keys import Kek
from vault.store import KeyStorage, KeyStore, SecretRow, SubjectKey

_KEK_ID = "kek_id"


def subject_hash(subject: str) -> str:
    """SHA-256 (hex) of the UTF-8 subject id: what tombstones and receipts record.

    Unsalted on purpose, so whoever knows a subject id can check that it was erased; a
    low-entropy subject id can therefore be confirmed by guessing, which an erasure record needs.
    """
    return hashlib.sha256(subject.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class ErasureReceipt:
    """What an erase did: the refs tombstoned (empty for an unknown subject) and when."""

    request_id: str
    subject_hash: str
    ref_ids: tuple[str, ...]
    erased_at: datetime


def _as_ref(ref: CapabilityRef | str) -> CapabilityRef:
    parsed = CapabilityRef.parse(ref)
    if parsed is None:
        raise SecretError(f"not a vault://secret/<id> ref (got a {type(ref).__name__})")
    return parsed


def _check_text(value: object, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        got = "an empty string" if isinstance(value, str) else f"a {type(value).__name__}"
        raise VaultError(f"{what} must be a non-empty string, got {got}")
    return value


class Vault:
    """A key store file opened with its KEK. Implements kernel.capability.SecretResolver."""

    def __init__(self, store: KeyStorage, kek: Kek, clock: Clock) -> None:
        """Use `Vault.open`."""
        self._store = store
        self._kek = kek
        self._clock = clock

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str] | KeyStorage,
        kek: Kek | bytes,
        *,
        clock: Clock | None = None,
    ) -> Vault:
        """Open (or create, mode 0600) the key store at `path`, or over an open key store
        (`vault.postgres_store.PostgresKeyStore`); the vault closes it.

        A new store records the KEK's id; an existing one must have been written under the same
        KEK, else WrongKekError before anything is read.
        """
        kek = kek if isinstance(kek, Kek) else Kek(kek)
        store = KeyStore(path) if isinstance(path, str | os.PathLike) else path
        try:
            with store.transaction():
                stored = store.get_meta(_KEK_ID)
                if stored is None:
                    store.set_meta(_KEK_ID, kek.kek_id)
                elif stored != kek.kek_id:
                    raise WrongKekError(
                        f"key store {str(store.path)!r} is keyed by KEK {stored}; the KEK given "
                        f"is {kek.kek_id}"
                    )
        except BaseException:
            store.close()
            raise
        return cls(store, kek, clock if clock is not None else SystemClock())

    def close(self) -> None:
        self._store.close()

    def __enter__(self) -> Vault:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def path(self) -> Path | str:
        return self._store.path

    @property
    def store(self) -> KeyStorage:
        return self._store

    @property
    def kek_id(self) -> str:
        return self._kek.kek_id

    def __repr__(self) -> str:
        return f"Vault({str(self.path)!r}, {self._kek.kek_id})"

    # -- writing ----------------------------------------------------------------------------

    def put(self, value: Any, subject: str) -> CapabilityRef:
        """Encrypt `value` (any canonical-JSON value) for `subject`; return its new ref."""
        _check_text(subject, "subject")
        canonical_json(value)  # fail before touching the store if the value has no JSON form
        ref = CapabilityRef.new()
        salt = secrets.token_bytes(crypto.SALT_SIZE)
        now = self._now().isoformat()
        with self._store.transaction():
            key = self._store.subject_key(subject)
            if key is None:
                wrapped = crypto.wrap_dek(
                    self._kek.key, self._kek.kek_id, subject, crypto.new_key()
                )
                # Another instance may have stored this subject's key first: use the one kept.
                key = self._store.add_subject(SubjectKey(subject, wrapped, self._kek.kek_id), now)
            dek = self._unwrap(key)
            nonce, ciphertext = crypto.encrypt_secret(dek, ref.ref_id, subject, salt, value)
            self._store.add_secret(ref.ref_id, subject, nonce, ciphertext, now)
        return ref

    # -- reading (SecretResolver) -----------------------------------------------------------

    def resolve(self, ref: CapabilityRef | str) -> Any:
        """The secret value; SecretError if unknown, SecretError(tombstoned=True) if erased."""
        ref = _as_ref(ref)
        with self._store.lock:
            row = self._store.secret(ref.ref_id)
            if row is None:
                if self._store.is_tombstoned(ref.ref_id):
                    raise SecretError(f"secret {ref.uri} was erased", tombstoned=True)
                raise SecretError(f"unknown secret {ref.uri}")
            return self._decrypt(row)[1]

    def commitment(self, ref: CapabilityRef | str) -> str | None:
        """kernel.capability.commitment(salt, value): stable for the ref; None if unknown or
        erased (the salt is gone with the value)."""
        ref = _as_ref(ref)
        with self._store.lock:
            row = self._store.secret(ref.ref_id)
            if row is None:
                return None
            salt, value = self._decrypt(row)
        return commitment(salt, value)

    def is_tombstoned(self, ref: CapabilityRef | str) -> bool:
        return self._store.is_tombstoned(_as_ref(ref).ref_id)

    def refs_of(self, subject: str) -> list[CapabilityRef]:
        """The live (not erased) refs of `subject`, oldest first."""
        return [CapabilityRef(rid) for rid in self._store.ref_ids_of(subject)]

    # -- erasure and rotation ---------------------------------------------------------------

    def erase(self, subject: str, request_id: str) -> ErasureReceipt:
        """Crypto-shred `subject`: delete its DEK and ciphertexts, tombstone its refs.

        One transaction, then a WAL checkpoint with TRUNCATE. No VACUUM is needed: with
        secure_delete SQLite zeroes the deleted cells and freed pages themselves, so the
        checkpointed main file holds zeros where the bytes were, and the truncated WAL holds
        nothing. An unknown subject yields a receipt with no refs.
        """
        _check_text(subject, "subject")
        _check_text(request_id, "request_id")
        hashed = subject_hash(subject)
        erased_at = self._now()
        with self._store.lock:
            ref_ids = self._store.erase_subject(subject, hashed, request_id, erased_at.isoformat())
            self._store.purge_erased()
        return ErasureReceipt(request_id, hashed, tuple(ref_ids), erased_at)

    def rotate_kek(self, new_kek: Kek | bytes) -> int:
        """Re-wrap every DEK under `new_kek` in one transaction and record its id.

        Ciphertexts are untouched. Afterwards the old KEK opens nothing: the store's KEK id
        changed and the old wrapped keys are zeroed (secure_delete) and out of the WAL. Returns
        the number of DEKs re-wrapped.
        """
        new = new_kek if isinstance(new_kek, Kek) else Kek(new_kek)
        # The outer lock spans commit and swap, so no reader pairs a new row with the old KEK.
        with self._store.lock:
            with self._store.transaction():
                keys = self._store.subject_keys()
                for key in keys:
                    dek = self._unwrap(key)
                    wrapped = crypto.wrap_dek(new.key, new.kek_id, key.subject, dek)
                    self._store.rewrap_subject(SubjectKey(key.subject, wrapped, new.kek_id))
                self._store.set_meta(_KEK_ID, new.kek_id)
            self._kek = new
            self._store.purge_erased()
        return len(keys)

    # -- internals --------------------------------------------------------------------------

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock.now(), UTC)

    def _unwrap(self, key: SubjectKey) -> bytes:
        if key.kek_id != self._kek.kek_id:
            raise WrongKekError(
                f"a data key in {str(self.path)!r} is wrapped by KEK {key.kek_id}, this vault "
                f"holds {self._kek.kek_id} (was the KEK rotated by another process?)"
            )
        return crypto.unwrap_dek(self._kek.key, key.kek_id, key.subject, key.wrapped_dek)

    def _decrypt(self, row: SecretRow) -> tuple[bytes, Any]:
        dek = self._unwrap(SubjectKey(row.subject, row.wrapped_dek, row.kek_id))
        return crypto.decrypt_secret(dek, row.ref_id, row.subject, row.nonce, row.ciphertext)
