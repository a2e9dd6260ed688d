"""Signed-note checkpoints: formats, known answers, tampering, unknown keys and key rotation."""

from __future__ import annotations

import base64
import hashlib
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from governance.checkpoint import (
    MAX_SIGNATURES,
    Checkpoint,
    Signer,
    Verifier,
    key_id,
    open_checkpoint,
    open_note,
    sign_checkpoint,
    sign_note,
)
from governance.errors import CheckpointError, LedgerError

ORIGIN = "ledgerflow.example/audit"
ROOT = hashlib.sha256(b"root").digest()

# golang.org/x/mod/sumdb/note's documented example: keys and the note they produce.
PETER_SIGNER = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
PETER_VERIFIER = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
PETER_TEXT = (
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n"
)
PETER_NOTE = (
    PETER_TEXT + "\n— PeterNeumann "
    "x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
).encode()

# A checkpoint published by the Go checksum database, and the key built into the go command.
SUMDB_VERIFIER = "sum.golang.org+033de0ae+Ac4zctda0e5eza+HJyk9SxEdh+s3Ux18htTTAD8OuAn8"
SUMDB_NOTE = (
    "go.sum database tree\n15368405\n/g9am3I6YWNKaZX/jkne1fqd9zEyjss+JXyPXG0WfkY=\n\n"
    "— sum.golang.org "
    "Az3grqJGUaSGukG9p8nI2vKgiFn7qGHxn0W+mrwyI6Gz3F0t1J3LzmWk/p96Ybf295EjwdSwlzgijq5WA9d1Ded7owM=\n"
).encode()


SIGNER = Signer.generate(ORIGIN)


@pytest.fixture(scope="module")
def signer() -> Signer:
    return SIGNER


@pytest.fixture(scope="module")
def other() -> Signer:
    return Signer.generate("witness.example/w1")


def _checkpoint(size: int = 42) -> Checkpoint:
    return Checkpoint(ORIGIN, size, ROOT)


def _flip_byte(data: bytes, position: int, bit: int) -> bytes:
    changed = bytearray(data)
    changed[position] ^= 1 << bit
    return bytes(changed)


def _signature_bytes(line: str) -> bytes:
    return base64.b64decode(line.rstrip("\n").split(" ")[2])


# Known answers.


def test_go_sumdb_note_example_known_answer() -> None:
    signer = Signer.from_text(PETER_SIGNER)
    assert sign_note(PETER_TEXT, [signer]) == PETER_NOTE
    opened = open_note(PETER_NOTE, [Verifier.from_text(PETER_VERIFIER)])
    assert opened.text == PETER_TEXT
    assert opened.verified_by == ("PeterNeumann",)


def test_published_sum_golang_org_checkpoint_verifies() -> None:
    opened = open_checkpoint(SUMDB_NOTE, [Verifier.from_text(SUMDB_VERIFIER)])
    assert opened.checkpoint.origin == "go.sum database tree"
    assert opened.checkpoint.size == 15368405
    assert opened.checkpoint.root == base64.b64decode(
        "/g9am3I6YWNKaZX/jkne1fqd9zEyjss+JXyPXG0WfkY="
    )
    assert opened.verified_by == ("sum.golang.org",)


# Keys.


def test_key_id_follows_the_spec_formula() -> None:
    verifier = Verifier.from_text(PETER_VERIFIER)
    material = b"PeterNeumann" + b"\n" + b"\x01" + verifier.public_key
    assert key_id("PeterNeumann", verifier.public_key) == hashlib.sha256(material).digest()[:4]
    assert verifier.key_id.hex() == "c74f20a3"
    assert Signer.from_text(PETER_SIGNER).key_id == verifier.key_id


def test_key_text_forms_round_trip(signer: Signer) -> None:
    again = Signer.from_text(signer.to_text())
    assert again.to_text() == signer.to_text()
    assert again.verifier() == signer.verifier()
    assert Verifier.from_text(signer.verifier().to_text()) == signer.verifier()
    assert Signer.from_text(PETER_SIGNER).to_text() == PETER_SIGNER
    assert Verifier.from_text(PETER_VERIFIER).to_text() == PETER_VERIFIER
    assert signer.to_text().startswith(f"PRIVATE+KEY+{ORIGIN}+{signer.key_id.hex()}+")
    assert "PRIVATE" not in repr(signer)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "key id c74f20a4"),
        ("PeterNeumann+c74f20a3+Ahpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "type byte 0x01"),
        (
            "PeterNeumann+c74f20a3+AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
            "33 bytes, .* got 32 bytes",
        ),
        ("PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10T!", "not valid base64"),
        ("PeterNeumann+c74f20+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "not 8 hexadecimal"),
        ("Peter Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "key name"),
        ("+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "key name ''"),
        ("PeterNeumann+c74f20a3", "must read"),
    ],
)
def test_bad_verifier_keys_are_refused(text: str, message: str) -> None:
    with pytest.raises(CheckpointError, match=message):
        Verifier.from_text(text)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz", "PRIVATE\\+KEY\\+"),
        (
            "PRIVATE+KEY+PeterNeumann+c74f20a4+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz",
            "c74f20a4",
        ),
        ("PRIVATE+KEY+PeterNeumann+c74f20a3+AoEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz", "0x01"),
        ("PRIVATE+KEY+PeterNeumann+c74f20a3", "must read"),
    ],
)
def test_bad_signer_keys_are_refused(text: str, message: str) -> None:
    with pytest.raises(CheckpointError, match=message):
        Signer.from_text(text)


@pytest.mark.parametrize("name", ["", "a+b", "a b", "a\tb", "a\u00a0b"])
def test_key_names_must_be_non_empty_without_plus_or_space(name: str) -> None:
    with pytest.raises(CheckpointError, match="key name"):
        Signer.generate(name)


# Round trip.


def test_checkpoint_body_format() -> None:
    body = Checkpoint(ORIGIN, 7, ROOT, ("ext one",)).body()
    root = base64.b64encode(ROOT).decode()
    assert body == f"{ORIGIN}\n7\n{root}\next one\n".encode()
    assert Checkpoint.parse_body(body) == Checkpoint(ORIGIN, 7, ROOT, ("ext one",))


def test_round_trip(signer: Signer) -> None:
    checkpoint = _checkpoint()
    note = sign_checkpoint(checkpoint, [signer])
    assert note.startswith(checkpoint.body() + b"\n\xe2\x80\x94 " + ORIGIN.encode() + b" ")
    opened = open_checkpoint(note, [signer.verifier()], origin=ORIGIN)
    assert opened.checkpoint == checkpoint
    assert opened.verified_by == (ORIGIN,)


@settings(max_examples=25, deadline=None)
@given(
    origin=st.text(st.characters(min_codepoint=0x20, exclude_categories=["Cs"]), min_size=1),
    size=st.integers(0, 2**64 - 1),
    root=st.binary(min_size=32, max_size=32),
    extensions=st.lists(
        st.text(st.characters(min_codepoint=0x20, exclude_categories=["Cs"]), min_size=1),
        max_size=3,
    ),
)
def test_any_checkpoint_round_trips(
    signer: Signer, origin: str, size: int, root: bytes, extensions: list[str]
) -> None:
    checkpoint = Checkpoint(origin, size, root, tuple(extensions))
    opened = open_checkpoint(sign_checkpoint(checkpoint, [signer]), [signer.verifier()])
    assert opened.checkpoint == checkpoint


def test_origin_must_match_when_asked(signer: Signer) -> None:
    note = sign_checkpoint(_checkpoint(), [signer])
    with pytest.raises(CheckpointError, match=r"origin is 'ledgerflow\.example/audit', expected"):
        open_checkpoint(note, [signer.verifier()], origin="another.example/log")


# Tampering.


def test_any_bit_flip_in_the_body_is_rejected(signer: Signer) -> None:
    note = sign_checkpoint(_checkpoint(), [signer])
    body_length = len(_checkpoint().body())
    for position in range(body_length):
        for bit in range(8):
            with pytest.raises(CheckpointError):
                open_checkpoint(_flip_byte(note, position, bit), [signer.verifier()])


def test_a_changed_root_is_rejected(signer: Signer) -> None:
    note = sign_checkpoint(_checkpoint(), [signer])
    signatures = note[len(_checkpoint().body()) :]
    for bit in range(0, 256, 7):
        changed = bytearray(ROOT)
        changed[bit // 8] ^= 1 << (bit % 8)
        forged = Checkpoint(ORIGIN, 42, bytes(changed)).body() + signatures
        with pytest.raises(CheckpointError, match="does not verify"):
            open_checkpoint(forged, [signer.verifier()])


def test_any_bit_flip_in_the_signature_is_rejected(signer: Signer) -> None:
    checkpoint = _checkpoint()
    line = signer.sign(checkpoint.body())
    raw = _signature_bytes(line)
    for position in range(len(raw)):
        for bit in range(8):
            changed = base64.b64encode(_flip_byte(raw, position, bit)).decode()
            note = checkpoint.body() + f"\n— {ORIGIN} {changed}\n".encode()
            # A flip in the key id makes the key unknown; anywhere else the signature fails.
            message = "no signature from a known key" if position < 4 else "does not verify"
            with pytest.raises(CheckpointError, match=message):
                open_checkpoint(note, [signer.verifier()])


# Unknown keys and rotation.


def test_unknown_keys_are_ignored(signer: Signer, other: Signer) -> None:
    note = sign_checkpoint(_checkpoint(), [other, signer])
    assert open_checkpoint(note, [signer.verifier()]).verified_by == (ORIGIN,)


def test_a_known_key_is_required(signer: Signer, other: Signer) -> None:
    note = sign_checkpoint(_checkpoint(), [other])
    with pytest.raises(CheckpointError, match="no signature from a known key"):
        open_checkpoint(note, [signer.verifier()])
    with pytest.raises(CheckpointError, match="no signature from a known key"):
        open_checkpoint(note, [])


def test_a_key_sharing_only_the_name_or_only_the_id_is_unknown(signer: Signer) -> None:
    body = _checkpoint().body()
    impostor = Signer.generate(ORIGIN)  # same name, different key, so a different id
    same_id = signer.sign(body).replace(ORIGIN, "impostor.example", 1)  # same id, other name
    note = body + b"\n" + (impostor.sign(body) + same_id + signer.sign(body)).encode()
    assert open_checkpoint(note, [signer.verifier()]).verified_by == (ORIGIN,)


def test_a_failing_signature_from_a_known_key_rejects_the_note(signer: Signer) -> None:
    checkpoint = _checkpoint()
    good = signer.sign(checkpoint.body())
    bad = signer.sign(Checkpoint(ORIGIN, 43, ROOT).body())
    note = checkpoint.body() + ("\n" + good + bad).encode()
    with pytest.raises(CheckpointError, match="signature line 2 by known key"):
        open_checkpoint(note, [signer.verifier()])


def test_co_signed_rotation_is_accepted_by_either_key(signer: Signer) -> None:
    old = Signer.generate("ledgerflow.example/audit-2024")
    new = Signer.generate("ledgerflow.example/audit-2025")
    note = sign_checkpoint(_checkpoint(), [old, new])
    assert open_checkpoint(note, [old.verifier()]).verified_by == (old.name,)
    assert open_checkpoint(note, [new.verifier()]).verified_by == (new.name,)
    both = open_checkpoint(note, [new.verifier(), old.verifier(), signer.verifier()])
    assert both.verified_by == (old.name, new.name)


def test_verifiers_colliding_on_name_and_id_are_refused(signer: Signer) -> None:
    # A real 32-bit id collision costs ~2**32 key generations: fake one.
    note = sign_checkpoint(_checkpoint(), [signer])
    twin = Verifier(signer.name, Signer.generate(signer.name).verifier().public_key)
    with (
        mock.patch("governance.checkpoint.key_id", return_value=b"\x00" * 4),
        pytest.raises(CheckpointError, match="two different verifier keys share name"),
    ):
        open_checkpoint(note, [signer.verifier(), twin])


# Malformed notes.


def _signed(text: str, signer: Signer) -> bytes:
    return sign_note(text, [signer])


def _malformed_notes() -> list[tuple[str, bytes, str]]:
    signer = SIGNER
    good = sign_checkpoint(_checkpoint(), [signer])
    body = _checkpoint().body()
    root = base64.b64encode(ROOT).decode()
    signature = signer.sign(body)
    unknown = Signer.generate("someone.example").sign(body)
    return [
        ("no blank line", good.replace(b"\n\n", b"\n"), "no blank line"),
        ("no final newline", good[:-1], "must end with a newline"),
        ("no signatures", body + b"\n", "no signature lines after its last blank line"),
        ("not utf-8", good.replace(b"audit", b"aud\xffit", 1), "not valid UTF-8"),
        ("control character", good.replace(b"audit", b"aud\rit", 1), "control character"),
        ("text after signatures", good + b"trailing\n", "signature line 2 does not start"),
        ("blank line after signatures", good + b"\n", "no signature lines after its last"),
        ("bad signature base64", body + b"\n\xe2\x80\x94 x AB!=\n", "not valid base64"),
        ("signature too short", body + b"\n\xe2\x80\x94 x AAAA\n", "no signature"),
        ("ascii dash", good.replace("—".encode(), b"--"), "does not start with an em dash"),
        ("three fields", body + b"\n\xe2\x80\x94 a b c\n", "must read"),
        ("too many signatures", body + b"\n" + (unknown * (MAX_SIGNATURES + 1)).encode(), "101"),
        (
            "root 31 bytes",
            _signed(f"o\n1\n{base64.b64encode(bytes(31)).decode()}\n", signer),
            "31 bytes",
        ),
        ("root base64", _signed("o\n1\nnot base64!\n", signer), "root hash is not valid base64"),
        ("root not canonical", _signed(f"o\n1\n{root[:-2]}1=\n", signer), "not canonical"),
        ("size leading zero", _signed(f"o\n01\n{root}\n", signer), "'01' is not a decimal"),
        ("size plus sign", _signed(f"o\n+1\n{root}\n", signer), "'\\+1' is not a decimal"),
        ("size underscore", _signed(f"o\n1_0\n{root}\n", signer), "'1_0' is not a decimal"),
        ("size arabic digit", _signed(f"o\n\u0661\n{root}\n", signer), "is not a decimal"),
        ("size too big", _signed(f"o\n{2**64}\n{root}\n", signer), "out of range"),
        ("two lines", _signed("o\n1\n", signer), "has 2 lines"),
        ("empty origin", _signed(f"\n1\n{root}\n", signer), "origin is empty"),
        ("empty extension", _signed(f"o\n1\n{root}\n\nx\n", signer), "extension line 1 is empty"),
        (
            "trailing space in signature line",
            body + b"\n" + signature.encode()[:-1] + b" \n",
            "must read",
        ),
    ]


MALFORMED = _malformed_notes()


@pytest.mark.parametrize(
    ("note", "message"), [c[1:] for c in MALFORMED], ids=[c[0] for c in MALFORMED]
)
def test_malformed_notes_are_rejected_with_a_clear_message(note: bytes, message: str) -> None:
    with pytest.raises(CheckpointError, match=message):
        open_checkpoint(note, [SIGNER.verifier()])


def test_up_to_the_limit_of_signatures_is_accepted(signer: Signer) -> None:
    body = _checkpoint().body()
    unknown = Signer.generate("someone.example").sign(body)
    note = body + b"\n" + (unknown * (MAX_SIGNATURES - 1) + signer.sign(body)).encode()
    assert open_checkpoint(note, [signer.verifier()]).verified_by == (ORIGIN,)


def test_checkpoint_fields_are_validated() -> None:
    with pytest.raises(CheckpointError, match="root hash is 31 bytes, expected 32"):
        Checkpoint(ORIGIN, 1, bytes(31))
    with pytest.raises(CheckpointError, match="tree size -1 is out of range"):
        Checkpoint(ORIGIN, -1, ROOT)
    with pytest.raises(CheckpointError, match="origin holds a newline"):
        Checkpoint("a\nb", 1, ROOT)
    with pytest.raises(CheckpointError, match="not valid UTF-8"):
        Checkpoint.parse_body(b"\xff\n1\nAA==\n")
    with pytest.raises(CheckpointError, match="extension line 1 holds a lone surrogate"):
        Checkpoint(ORIGIN, 1, ROOT, ("\ud800",))
    with pytest.raises(CheckpointError, match="lone surrogate"):
        Signer.generate("log\udfff")


def test_signing_needs_a_signer_and_a_well_formed_text(signer: Signer) -> None:
    with pytest.raises(CheckpointError, match="at least one signer"):
        sign_checkpoint(_checkpoint(), [])
    with pytest.raises(CheckpointError, match="end with a newline"):
        sign_note("no newline", [signer])
    assert issubclass(CheckpointError, LedgerError)
