"""Key-encryption keys (KEKs): loading, generating and identifying them.

A KEK is 32 random bytes. It never enters the key store: only its id does, so that opening a
store with the wrong KEK fails at once with a clear message instead of at the first decryption.
Sources: a file holding the raw 32 bytes or their base64 text, or the `LEDGERFLOW_KEK`
environment variable (base64).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import secrets
from collections.abc import Mapping
from pathlib import Path

from vault.errors import KekError

KEK_SIZE = 32
ENV_VAR = "LEDGERFLOW_KEK"
_ID_DOMAIN = b"ledgerflow.vault.kek-id.v1\x00"


class Kek:
    """A 32-byte key-encryption key. `repr` and `str` never show the key bytes."""

    __slots__ = ("_id", "_key")

    def __init__(self, key: bytes) -> None:
        if not isinstance(key, bytes | bytearray) or len(key) != KEK_SIZE:
            size = len(key) if isinstance(key, bytes | bytearray) else type(key).__name__
            raise KekError(f"a KEK is exactly {KEK_SIZE} bytes, got {size}")
        self._key = bytes(key)
        # A hash of a 256-bit random key reveals nothing usable; domain-separated so the id can
        # never collide with another use of SHA-256 over the same bytes.
        self._id = "kek_" + hashlib.sha256(_ID_DOMAIN + self._key).hexdigest()[:16]

    @classmethod
    def generate(cls) -> Kek:
        return cls(secrets.token_bytes(KEK_SIZE))

    @property
    def key(self) -> bytes:
        return self._key

    @property
    def kek_id(self) -> str:
        """A stable public identifier of this key, recorded in the key store."""
        return self._id

    def to_base64(self) -> str:
        return base64.b64encode(self._key).decode("ascii")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Kek) and secrets.compare_digest(self._key, other._key)

    def __hash__(self) -> int:
        return hash(self._id)

    def __repr__(self) -> str:
        return f"Kek({self._id})"


def _from_base64(text: str, source: str) -> Kek:
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise KekError(f"{source} is not base64 text") from None
    if len(raw) != KEK_SIZE:
        raise KekError(f"{source} decodes to {len(raw)} bytes; a KEK is {KEK_SIZE}")
    return Kek(raw)


def load_kek_file(path: str | os.PathLike[str]) -> Kek:
    """The KEK in `path`: exactly 32 raw bytes, or base64 text of 32 bytes (whitespace ignored).

    Base64 of 32 bytes is 44 characters, so the two forms cannot be confused.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise KekError(f"cannot read KEK file {os.fspath(path)!r}: {exc.strerror}") from None
    if len(data) == KEK_SIZE:
        return Kek(data)
    try:
        return _from_base64(data.decode("ascii"), f"KEK file {os.fspath(path)!r}")
    except (UnicodeDecodeError, KekError):
        raise KekError(
            f"KEK file {os.fspath(path)!r} holds {len(data)} bytes: neither {KEK_SIZE} raw "
            f"bytes nor base64 text of {KEK_SIZE} bytes"
        ) from None


def load_kek_env(name: str = ENV_VAR, environ: Mapping[str, str] | None = None) -> Kek:
    """The KEK in environment variable `name` (base64 of 32 bytes)."""
    env = os.environ if environ is None else environ
    text = env.get(name)
    if not text:
        raise KekError(f"environment variable {name} is not set (base64 of a 32-byte KEK)")
    return _from_base64(text, f"environment variable {name}")


def load_kek(
    path: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None
) -> Kek:
    """The KEK from `path` when given, else from the `LEDGERFLOW_KEK` environment variable."""
    return load_kek_file(path) if path is not None else load_kek_env(environ=environ)


def generate_kek_file(path: str | os.PathLike[str]) -> Kek:
    """Write a new random KEK to `path` as base64 text, mode 0600, and return it.

    Refuses to overwrite an existing file (O_EXCL): losing a KEK loses every secret under it.
    """
    kek = Kek.generate()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KekError(f"KEK file {os.fspath(path)!r} exists; refusing to overwrite") from None
    except OSError as exc:
        raise KekError(f"cannot create KEK file {os.fspath(path)!r}: {exc.strerror}") from None
    with os.fdopen(fd, "wb") as file:
        os.fchmod(fd, 0o600)  # O_CREAT's mode is filtered by the umask; be explicit.
        file.write((kek.to_base64() + "\n").encode("ascii"))
        file.flush()
        os.fsync(fd)
    return kek
