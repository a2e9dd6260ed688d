"""Errors of the vault: key material, the key store file, ciphertext integrity and intake.

Every message names the file, ref, subject path or key id involved, never a secret value or key.
"""

from __future__ import annotations

from kernel.errors import LedgerflowError


class VaultError(LedgerflowError):
    """Base of every error raised on purpose by the vault."""


class KekError(VaultError, ValueError):
    """Key-encryption key material is missing or malformed (wrong length, not base64)."""


class WrongKekError(KekError):
    """The KEK given is not the one the key store's data keys are wrapped with."""


class KeyStoreError(VaultError):
    """The key store file cannot be used: not a key store, unreadable, or closed."""


class TamperedError(VaultError):
    """A ciphertext or wrapped key failed authentication: altered, or moved to another ref,
    subject or key id. The vault never returns unauthenticated bytes."""


class IntakeError(VaultError, ValueError):
    """A `{"$secret": ..., "subject": ...}` marker in a context is malformed (see `path`)."""

    def __init__(self, message: str, *, path: str) -> None:
        super().__init__(message)
        self.path = path
