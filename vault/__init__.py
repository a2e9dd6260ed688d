"""The vault: secrets encrypted per data subject, referenced by `vault://secret/<id>`, erasable
per subject (GDPR art. 17) by crypto-shredding.

Imports only `kernel`, the standard library and `cryptography`.
"""

from __future__ import annotations

from kernel.errors import SchemaVersionError  # one class for every stored format
from vault.errors import (
    IntakeError,
    KekError,
    KeyStoreError,
    TamperedError,
    VaultError,
    WrongKekError,
)
from vault.intake import SecretSink, seal_context
from vault.keys import ENV_VAR, Kek, generate_kek_file, load_kek, load_kek_env, load_kek_file
from vault.store import SCHEMA_VERSION
from vault.vault import ErasureReceipt, Vault, subject_hash

__all__ = [
    "ENV_VAR",
    "SCHEMA_VERSION",
    "ErasureReceipt",
    "IntakeError",
    "Kek",
    "KekError",
    "KeyStoreError",
    "SchemaVersionError",
    "SecretSink",
    "TamperedError",
    "Vault",
    "VaultError",
    "WrongKekError",
    "generate_kek_file",
    "load_kek",
    "load_kek_env",
    "load_kek_file",
    "seal_context",
    "subject_hash",
]
