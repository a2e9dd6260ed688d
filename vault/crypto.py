"""The vault's cryptography: AES-256-GCM for secrets (under a per-subject DEK) and for wrapping
DEKs (under the KEK).

Guarantees:
- Every encryption uses a fresh random 96-bit nonce. With random nonces one key may safely seal
  about 2**32 messages; a DEK seals one subject's secrets, far below that.
- A secret's associated data binds its ref id and subject, and a wrapped DEK's binds the KEK id
  and subject: a ciphertext or wrapped key copied to another row fails authentication
  (`TamperedError`) instead of decrypting to another subject's data.
- The plaintext of a secret is its 16-byte commitment salt followed by the canonical JSON of the
  value, so the salt is exactly as recoverable as the value: erased with it.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kernel.canonical import canonical_json
from vault.errors import TamperedError

KEY_SIZE = 32
NONCE_SIZE = 12
SALT_SIZE = 16
_SECRET_DOMAIN = "ledgerflow.vault.secret.v1"
_DEK_DOMAIN = "ledgerflow.vault.dek.v1"


def new_key() -> bytes:
    """A fresh random 256-bit key (a DEK)."""
    return secrets.token_bytes(KEY_SIZE)


def _secret_aad(ref_id: str, subject: str) -> bytes:
    # Canonical JSON of an array: unambiguous framing, no separator a subject could contain.
    return canonical_json([_SECRET_DOMAIN, ref_id, subject])


def _dek_aad(kek_id: str, subject: str) -> bytes:
    return canonical_json([_DEK_DOMAIN, kek_id, subject])


def encrypt_secret(
    dek: bytes, ref_id: str, subject: str, salt: bytes, value: Any
) -> tuple[bytes, bytes]:
    """(nonce, ciphertext) of `salt || canonical_json(value)` bound to `ref_id` and `subject`."""
    nonce = secrets.token_bytes(NONCE_SIZE)
    plaintext = salt + canonical_json(value)
    return nonce, AESGCM(dek).encrypt(nonce, plaintext, _secret_aad(ref_id, subject))


def decrypt_secret(
    dek: bytes, ref_id: str, subject: str, nonce: bytes, ciphertext: bytes
) -> tuple[bytes, Any]:
    """(salt, value) of a secret; TamperedError if it does not authenticate for this row."""
    try:
        plaintext = AESGCM(dek).decrypt(nonce, ciphertext, _secret_aad(ref_id, subject))
    except (InvalidTag, ValueError):
        raise TamperedError(
            f"secret {ref_id} failed authentication: its ciphertext was altered or does not "
            "belong to this ref and subject"
        ) from None
    return plaintext[:SALT_SIZE], json.loads(plaintext[SALT_SIZE:])


def wrap_dek(kek: bytes, kek_id: str, subject: str, dek: bytes) -> bytes:
    """`nonce || AES-GCM(kek, dek)`, bound to the KEK id and the subject."""
    nonce = secrets.token_bytes(NONCE_SIZE)
    return nonce + AESGCM(kek).encrypt(nonce, dek, _dek_aad(kek_id, subject))


def unwrap_dek(kek: bytes, kek_id: str, subject: str, wrapped: bytes) -> bytes:
    """The DEK inside `wrapped`; TamperedError if it does not authenticate for this subject."""
    nonce, sealed = wrapped[:NONCE_SIZE], wrapped[NONCE_SIZE:]
    try:
        dek = AESGCM(kek).decrypt(nonce, sealed, _dek_aad(kek_id, subject))
    except (InvalidTag, ValueError):
        raise TamperedError(
            f"the data key of a subject failed authentication under KEK {kek_id}: the wrapped "
            "key was altered or belongs to another subject"
        ) from None
    if len(dek) != KEY_SIZE:
        raise TamperedError(f"an unwrapped data key is {len(dek)} bytes, not {KEY_SIZE}")
    return dek
