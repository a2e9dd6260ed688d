"""Witness cosignatures of checkpoints (C2SP tlog-cosignature, Ed25519 `cosignature/v1`).

A witness that checked a checkpoint's consistency with what it saw before signs

    cosignature/v1\\n  time <unix seconds>\\n  <the checkpoint's note body>

and returns a note signature line `— <name> base64(key id || u64 time || signature)`, whose
key id is SHA-256(name || "\\n" || 0x04 || public key)[:4]. A witness's key travels as a vkey:
`<name>+<key id hex>+base64(0x04 || public key)`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from governance.checkpoint import SIGNATURE_PREFIX, note_text
from governance.errors import CheckpointError

COSIGNATURE_TYPE = 0x04


@dataclass(frozen=True, slots=True)
class WitnessKey:
    name: str
    public_key: bytes

    @property
    def key_id(self) -> bytes:
        digest = hashlib.sha256(
            self.name.encode() + b"\n" + bytes([COSIGNATURE_TYPE]) + self.public_key
        )
        return digest.digest()[:4]

    @classmethod
    def from_text(cls, text: str) -> WitnessKey:
        """A witness vkey `name+keyid+base64(0x04 || key)`; CheckpointError naming the flaw."""
        name, sep, rest = text.strip().partition("+")
        key_id_hex, sep2, encoded = rest.partition("+")
        try:
            raw = base64.b64decode(encoded, validate=True)
            stated = bytes.fromhex(key_id_hex)
        except (binascii.Error, ValueError):
            raw, stated = b"", b""
        if not (name and sep and sep2) or len(raw) != 33 or raw[0] != COSIGNATURE_TYPE:
            raise CheckpointError(
                f"witness key {text.strip()!r} is not NAME+KEYID+base64(0x04 || Ed25519 key)"
            )
        key = cls(name, raw[1:])
        if stated != key.key_id:
            raise CheckpointError(f"witness key {name!r}: its key id does not match the key")
        return key

    def to_text(self) -> str:
        encoded = base64.b64encode(bytes([COSIGNATURE_TYPE]) + self.public_key).decode()
        return f"{self.name}+{self.key_id.hex()}+{encoded}"


def cosigned_message(body: bytes, timestamp: int) -> bytes:
    return b"cosignature/v1\ntime " + str(timestamp).encode() + b"\n" + body


def cosignature_lines(text: str) -> list[str]:
    """The note signature lines of a witness's answer (or of a whole note)."""
    return [line for line in text.splitlines() if line.startswith(SIGNATURE_PREFIX)]


def verify_cosignature(line: str, note: bytes, key: WitnessKey) -> int | None:
    """The cosignature's time when `line` is `key`'s valid cosignature of the checkpoint
    `note`; None when the line is another key's. CheckpointError when it is `key`'s (its name
    and key id) but does not verify."""
    if not line.startswith(SIGNATURE_PREFIX):
        return None
    name, _, encoded = line[len(SIGNATURE_PREFIX) :].partition(" ")
    try:
        raw = base64.b64decode(encoded, validate=True)
    except binascii.Error:
        return None
    if name != key.name or raw[:4] != key.key_id:
        return None
    if len(raw) != 4 + 8 + 64:
        raise CheckpointError(f"cosignature of {key.name!r} is {len(raw)} bytes, not 76")
    timestamp = int.from_bytes(raw[4:12], "big")
    try:
        Ed25519PublicKey.from_public_bytes(key.public_key).verify(
            raw[12:], cosigned_message(note_text(note).encode(), timestamp)
        )
    except InvalidSignature:
        raise CheckpointError(f"cosignature of {key.name!r} does not verify") from None
    return timestamp
