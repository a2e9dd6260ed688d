"""Signed checkpoints of the audit ledger: C2SP signed notes (c2sp.org/signed-note) whose text
is a C2SP checkpoint body (c2sp.org/tlog-checkpoint), signed with Ed25519.

A checkpoint body is three or more non-empty lines:

    <origin>
    <tree size, decimal, no leading zero>
    <base64 of the 32-byte root hash>
    <optional extension lines>

A signed note is its text (ending in a newline), a blank line, then one or more signature lines
`— <key name> <base64(4-byte key id || signature)>` (U+2014 EM DASH, then a space). For Ed25519
the key id is SHA-256(key name || 0x0A || 0x01 || 32-byte public key)[:4].

Key text forms (those of Go's golang.org/x/mod/sumdb/note):

    verifier: <name>+<8 hex key id>+<base64(0x01 || public key)>
    signer:   PRIVATE+KEY+<name>+<8 hex key id>+<base64(0x01 || private key seed)>

Opening a note ignores signatures from unknown keys (a key is its name *and* id), rejects the
note if a signature from a known key fails, and requires at least one known signature: so a log
can rotate keys by co-signing with its old and new keys while verifiers move from one to the
other.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from governance.errors import CheckpointError
from governance.merkle import HASH_SIZE

ED25519_TYPE = 0x01
KEY_ID_SIZE = 4
MAX_SIGNATURES = 100
SIGNATURE_PREFIX = "— "  # U+2014 EM DASH, then a space

_PRIVATE_PREFIX = "PRIVATE+KEY+"
_HEX_ID = re.compile(r"[0-9a-fA-F]{8}")
_DECIMAL = re.compile(r"0|[1-9][0-9]{0,19}")
_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f]")  # ASCII controls but newline
_MAX_TREE_SIZE = 2**64 - 1


def _check_utf8(text: str, what: str) -> None:
    # A Python str may hold lone surrogates, which have no UTF-8 form.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise CheckpointError(
            f"{what} holds a lone surrogate at {exc.start}: no UTF-8 form"
        ) from exc


def _check_key_name(name: str) -> None:
    if not name or "+" in name or any(char.isspace() for char in name):
        raise CheckpointError(
            f"key name {name!r} is invalid: it must be non-empty, without '+' or whitespace"
        )
    _check_utf8(name, f"key name {name!r}")


def key_id(name: str, public_key: bytes) -> bytes:
    """The 4-byte C2SP key id of an Ed25519 key: SHA-256(name || 0x0A || 0x01 || key)[:4]."""
    material = name.encode() + b"\n" + bytes([ED25519_TYPE]) + public_key
    return hashlib.sha256(material).digest()[:KEY_ID_SIZE]


def _b64decode(text: str, what: str) -> bytes:
    """Decode standard base64, refusing any other spelling of the same bytes."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise CheckpointError(f"{what} is not valid base64: {text!r}") from exc
    # Re-encoding catches non-zero padding bits, so each value has exactly one encoding.
    if base64.b64encode(raw).decode() != text:
        raise CheckpointError(f"{what} is not canonical base64: {text!r}")
    return raw


def _b64encode(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _typed_key(text: str, size: int, what: str) -> bytes:
    """Decode base64(0x01 || key) and return the key, checking its type byte and length."""
    raw = _b64decode(text, what)
    if len(raw) != 1 + size or raw[0] != ED25519_TYPE:
        raise CheckpointError(
            f"{what} must be base64 of {1 + size} bytes, the Ed25519 type byte 0x01 then the "
            f"key; got {len(raw)} bytes starting {raw[:1].hex() or 'with nothing'}"
        )
    return raw[1:]


def _parse_key_id(text: str, what: str) -> bytes:
    if not _HEX_ID.fullmatch(text):
        raise CheckpointError(f"{what} key id {text!r} is not 8 hexadecimal digits")
    return bytes.fromhex(text)


@dataclass(frozen=True)
class Verifier:
    """An Ed25519 public key under a name, as a note verifier knows it.

    Preconditions, checked: a valid key name (non-empty, no '+', no whitespace) and a 32-byte key.
    """

    name: str
    public_key: bytes

    def __post_init__(self) -> None:
        _check_key_name(self.name)
        if len(self.public_key) != 32:
            raise CheckpointError(f"public key is {len(self.public_key)} bytes, expected 32")
        try:
            Ed25519PublicKey.from_public_bytes(self.public_key)
        except ValueError as exc:
            raise CheckpointError(f"public key of {self.name!r} is not an Ed25519 key") from exc

    @property
    def key_id(self) -> bytes:
        """The 4-byte key id that signature lines carry."""
        return key_id(self.name, self.public_key)

    @classmethod
    def from_text(cls, text: str) -> Verifier:
        """Parse `<name>+<8 hex key id>+<base64(0x01 || public key)>`, checking the key id."""
        parts = text.split("+", 2)
        if len(parts) != 3:
            raise CheckpointError("verifier key must read <name>+<key id>+<base64 key>")
        name, hex_id, encoded = parts
        _check_key_name(name)
        verifier = cls(name, _typed_key(encoded, 32, f"verifier key {name!r}"))
        _require_key_id(_parse_key_id(hex_id, f"verifier {name!r}"), verifier.key_id, name)
        return verifier

    def to_text(self) -> str:
        """The verifier key text form."""
        encoded = _b64encode(bytes([ED25519_TYPE]) + self.public_key)
        return f"{self.name}+{self.key_id.hex()}+{encoded}"

    def verify(self, message: bytes, signature: bytes) -> bool:
        """True when `signature` is this key's Ed25519 signature of `message`."""
        try:
            Ed25519PublicKey.from_public_bytes(self.public_key).verify(signature, message)
        except InvalidSignature:
            return False
        return True


def _require_key_id(stated: bytes, computed: bytes, name: str) -> None:
    if stated != computed:
        raise CheckpointError(
            f"key {name!r} states key id {stated.hex()} but its key gives {computed.hex()}"
        )


class Signer:
    """An Ed25519 private key under a name; signs note texts."""

    __slots__ = ("_key", "_name", "_public_key")

    def __init__(self, name: str, private_key: Ed25519PrivateKey) -> None:
        _check_key_name(name)
        self._name = name
        self._key = private_key
        self._public_key = private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    @classmethod
    def generate(cls, name: str) -> Signer:
        """A new random key under `name`."""
        return cls(name, Ed25519PrivateKey.generate())

    @classmethod
    def from_text(cls, text: str) -> Signer:
        """Parse `PRIVATE+KEY+<name>+<8 hex key id>+<base64(0x01 || seed)>`, checking the id."""
        if not text.startswith(_PRIVATE_PREFIX):
            raise CheckpointError(f"signer key must start with {_PRIVATE_PREFIX!r}")
        parts = text[len(_PRIVATE_PREFIX) :].split("+", 2)
        if len(parts) != 3:
            raise CheckpointError("signer key must read PRIVATE+KEY+<name>+<key id>+<base64 key>")
        name, hex_id, encoded = parts
        _check_key_name(name)
        seed = _typed_key(encoded, 32, f"signer key {name!r}")
        signer = cls(name, Ed25519PrivateKey.from_private_bytes(seed))
        _require_key_id(_parse_key_id(hex_id, f"signer {name!r}"), signer.key_id, name)
        return signer

    def to_text(self) -> str:
        """The signer key text form. It holds the private key: keep it secret."""
        seed = self._key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        encoded = _b64encode(bytes([ED25519_TYPE]) + seed)
        return f"{_PRIVATE_PREFIX}{self._name}+{self.key_id.hex()}+{encoded}"

    @property
    def name(self) -> str:
        """The key name written in signature lines."""
        return self._name

    @property
    def key_id(self) -> bytes:
        """The 4-byte key id written in signature lines."""
        return key_id(self._name, self._public_key)

    def verifier(self) -> Verifier:
        """The matching public verifier."""
        return Verifier(self._name, self._public_key)

    def sign(self, message: bytes) -> str:
        """The signature line of `message` (the note text), ending in a newline."""
        signature = self.key_id + self._key.sign(message)
        return f"{SIGNATURE_PREFIX}{self._name} {_b64encode(signature)}\n"

    def __repr__(self) -> str:
        return f"Signer(name={self._name!r}, key_id={self.key_id.hex()})"


@dataclass(frozen=True)
class SignedNote:
    """The text of a note whose signatures checked, and the names of the keys that signed it."""

    text: str
    verified_by: tuple[str, ...]


def _check_text(text: str) -> None:
    """A note text must end in a newline and hold no control character other than newline."""
    if not text.endswith("\n"):
        raise CheckpointError("note text must end with a newline")
    _check_no_control(text, "note text")
    _check_utf8(text, "note text")


def _check_no_control(text: str, what: str) -> None:
    found = _CONTROL.search(text)
    if found:
        raise CheckpointError(
            f"{what} holds control character {found.group()!r} at {found.start()}"
        )


def sign_note(text: str, signers: Sequence[Signer]) -> bytes:
    """Sign `text` with every signer; requires at least one signer and a text ending in a
    newline, without control characters other than newlines."""
    if not signers:
        raise CheckpointError("a note needs at least one signer")
    _check_text(text)
    message = text.encode()
    return (text + "\n" + "".join(signer.sign(message) for signer in signers)).encode()


@dataclass(frozen=True)
class _Signature:
    name: str
    key_id: bytes
    signature: bytes


def _split_note(note: bytes) -> tuple[str, list[str]]:
    """Split a note into its text and signature lines, checking the framing only."""
    try:
        decoded = note.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CheckpointError(f"note is not valid UTF-8 (byte {exc.start})") from exc
    _check_no_control(decoded, "note")
    # The text may contain blank lines: the signatures follow the last one.
    cut = decoded.rfind("\n\n")
    if cut < 0:
        raise CheckpointError("note has no blank line between its text and its signatures")
    block = decoded[cut + 2 :]
    if not block:
        raise CheckpointError("note has no signature lines after its last blank line")
    if not block.endswith("\n"):
        raise CheckpointError("note must end with a newline after its last signature line")
    return decoded[: cut + 1], block[:-1].split("\n")


def note_text(note: bytes) -> str:
    """A signed note's text, through its final newline (its framing checked, no signature)."""
    return _split_note(note)[0]


def note_signers(note: bytes) -> list[tuple[str, bytes]]:
    """The (key name, key id) of each signature line of a note, none of them verified."""
    return [(sig.name, sig.key_id) for sig in _parse_signatures(_split_note(note)[1])]


def _parse_signature_line(line: str, number: int) -> _Signature:
    if not line.startswith(SIGNATURE_PREFIX):
        raise CheckpointError(
            f"signature line {number} does not start with an em dash and a space "
            f"(nothing but signature lines may follow the blank line): {line[:60]!r}"
        )
    fields = line[len(SIGNATURE_PREFIX) :].split(" ")
    if len(fields) != 2:
        raise CheckpointError(f"signature line {number} must read '— <key name> <base64>'")
    name, encoded = fields
    _check_key_name(name)
    raw = _b64decode(encoded, f"signature line {number}")
    if len(raw) <= KEY_ID_SIZE:
        raise CheckpointError(f"signature line {number} holds {len(raw)} bytes: no signature")
    return _Signature(name, raw[:KEY_ID_SIZE], raw[KEY_ID_SIZE:])


def _parse_signatures(lines: list[str]) -> list[_Signature]:
    if len(lines) > MAX_SIGNATURES:
        raise CheckpointError(f"note has {len(lines)} signatures, more than {MAX_SIGNATURES}")
    return [_parse_signature_line(line, number) for number, line in enumerate(lines, 1)]


def _index_verifiers(verifiers: Sequence[Verifier]) -> dict[tuple[str, bytes], Verifier]:
    known: dict[tuple[str, bytes], Verifier] = {}
    for verifier in verifiers:
        slot = (verifier.name, verifier.key_id)
        if known.get(slot, verifier) != verifier:
            raise CheckpointError(
                f"two different verifier keys share name {verifier.name!r} and id "
                f"{verifier.key_id.hex()}"
            )
        known[slot] = verifier
    return known


def open_note(note: bytes, verifiers: Sequence[Verifier]) -> SignedNote:
    """Parse `note` and verify its signatures against `verifiers`.

    Signatures whose (key name, key id) no verifier has are ignored. Every signature from a
    known key must verify, and at least one must be present; otherwise `CheckpointError`.
    """
    text, lines = _split_note(note)
    signatures = _parse_signatures(lines)
    known = _index_verifiers(verifiers)
    message = text.encode()
    verified: list[str] = []
    for number, signature in enumerate(signatures, 1):
        verifier = known.get((signature.name, signature.key_id))
        if verifier is None:
            continue
        if not verifier.verify(message, signature.signature):
            raise CheckpointError(
                f"signature line {number} by known key {signature.name!r} "
                f"({signature.key_id.hex()}) does not verify"
            )
        if signature.name not in verified:
            verified.append(signature.name)
    if not verified:
        present = sorted({f"{s.name}+{s.key_id.hex()}" for s in signatures})
        trusted = sorted(f"{name}+{kid.hex()}" for name, kid in known)
        raise CheckpointError(f"no signature from a known key: note has {present}, known {trusted}")
    return SignedNote(text, tuple(verified))


@dataclass(frozen=True)
class Checkpoint:
    """A tree head: the log's origin, its size and root hash, and opaque extension lines."""

    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_line(self.origin, "origin")
        if not 0 <= self.size <= _MAX_TREE_SIZE:
            raise CheckpointError(f"tree size {self.size} is out of range 0..{_MAX_TREE_SIZE}")
        if len(self.root) != HASH_SIZE:
            raise CheckpointError(f"root hash is {len(self.root)} bytes, expected {HASH_SIZE}")
        for number, line in enumerate(self.extensions, 1):
            _check_line(line, f"extension line {number}")

    def body(self) -> bytes:
        """The note text: origin, size and base64 root, then extension lines, each ending in
        a newline."""
        lines = (self.origin, str(self.size), _b64encode(self.root), *self.extensions)
        return "".join(line + "\n" for line in lines).encode()

    @classmethod
    def parse_body(cls, body: bytes | str) -> Checkpoint:
        """Parse a checkpoint body; the size must be canonical decimal and the root 32 bytes."""
        try:
            text = body.decode("utf-8") if isinstance(body, bytes) else body
        except UnicodeDecodeError as exc:
            raise CheckpointError(f"checkpoint body is not valid UTF-8 (byte {exc.start})") from exc
        if not text.endswith("\n"):
            raise CheckpointError("checkpoint body must end with a newline")
        lines = text[:-1].split("\n")
        if len(lines) < 3:
            raise CheckpointError(
                f"checkpoint body has {len(lines)} lines, needs origin, size and root hash"
            )
        origin, size_text, root_text, *extensions = lines
        if not _DECIMAL.fullmatch(size_text):
            raise CheckpointError(
                f"tree size {size_text!r} is not a decimal number without leading zeros"
            )
        root = _b64decode(root_text, "root hash")
        return cls(origin, int(size_text), root, tuple(extensions))


def _check_line(line: str, what: str) -> None:
    if not line:
        raise CheckpointError(f"{what} is empty")
    if "\n" in line:
        raise CheckpointError(f"{what} holds a newline: {line!r}")
    _check_no_control(line, what)
    _check_utf8(line, what)


@dataclass(frozen=True)
class SignedCheckpoint:
    """A checkpoint whose note verified, and the names of the keys whose signatures checked."""

    checkpoint: Checkpoint
    verified_by: tuple[str, ...]


def sign_checkpoint(checkpoint: Checkpoint, signers: Sequence[Signer]) -> bytes:
    """The signed note of `checkpoint`, signed by every signer (at least one)."""
    return sign_note(checkpoint.body().decode(), signers)


def open_checkpoint(
    note: bytes, verifiers: Sequence[Verifier], *, origin: str | None = None
) -> SignedCheckpoint:
    """Verify a checkpoint note as `open_note` does, then parse its body.

    When `origin` is given the checkpoint must come from that log: a key may sign for several.
    """
    opened = open_note(note, verifiers)
    checkpoint = Checkpoint.parse_body(opened.text)
    if origin is not None and checkpoint.origin != origin:
        raise CheckpointError(f"checkpoint origin is {checkpoint.origin!r}, expected {origin!r}")
    return SignedCheckpoint(checkpoint, opened.verified_by)
