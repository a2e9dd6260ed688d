"""Erasure: tombstones, receipts, and a byte scan proving the erased bytes left every file.

The scan reads every file in the key store's directory (the database, its -wal and -shm files,
anything else SQLite left) and looks for each sensitive byte string of the erased subject: the
plaintexts, the raw DEK, the wrapped DEK, every nonce and ciphertext, and the raw subject id.
A positive control checks that the scan does find the stored forms before the erase, and a
negative control shows that without secure_delete the same scan finds deleted bytes.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from kernel.capability import CapabilityRef, SecretError
from kernel.clock import ManualClock
from vault import ErasureReceipt, Kek, Vault, VaultError, crypto, subject_hash

CARD = "4111-1111-1111-1111-SECRET"
IBAN = "DE89-3704-0044-0532-0130-00-SECRET"
# Longer than a page: stored on overflow pages, which are freed (not edited) on delete.
LETTER = "Dear-Alice-PRIVATE-LETTER-" + "".join(f"{i:05d}" for i in range(3000))
ALICE = "alice@example.org-SUBJECT"
BOB = "bob@example.org-SUBJECT"


def scan(directory: Path, needles: Iterable[bytes]) -> dict[bytes, list[str]]:
    """For each needle, the names of the files in `directory` that contain it."""
    contents = {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}
    return {n: [name for name, data in contents.items() if n in data] for n in needles}


def found(directory: Path, needles: Iterable[bytes]) -> dict[bytes, list[str]]:
    return {n: names for n, names in scan(directory, needles).items() if names}


def sensitive(vault: Vault, kek: Kek, subject: str, refs: list[CapabilityRef]) -> list[bytes]:
    """The stored forms of `subject`'s secrets, read through the store's internals."""
    key = vault._store.subject_key(subject)
    assert key is not None
    dek = crypto.unwrap_dek(kek.key, key.kek_id, subject, key.wrapped_dek)
    stored: list[bytes] = [key.wrapped_dek, dek]
    for ref in refs:
        row = vault._store.secret(ref.ref_id)
        assert row is not None
        stored += [row.nonce, row.ciphertext]
    return stored


def chunks(blob: bytes, size: int = 24) -> list[bytes]:
    """`blob` cut in pieces: a value longer than a page is split over overflow pages, so only
    pieces of it are contiguous in the file. 24 random bytes never match by chance."""
    if len(blob) <= size:
        return [blob]
    return [blob[i : i + size] for i in range(0, len(blob) - size, size)] + [blob[-size:]]


def plaintexts() -> list[bytes]:
    return [piece for text in (CARD, IBAN, LETTER) for piece in chunks(text.encode())]


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "store"
    directory.mkdir()
    return directory


def test_erase_leaves_no_trace_in_any_file(store_dir: Path) -> None:
    kek = Kek.generate()
    path = store_dir / "keys.db"
    with Vault.open(path, kek) as vault:
        # Interleave two subjects so erased rows share pages with kept ones.
        alice: list[CapabilityRef] = []
        for value in (CARD, IBAN, LETTER):
            alice.append(vault.put(value, ALICE))
            vault.put({"bob": value[:4]}, BOB)
        kept = vault.put("bob-keeps-this", BOB)
        stored = sensitive(vault, kek, ALICE, alice)
        dek = stored[1]

        # Positive control: the scan sees every stored form (in the db or the WAL) ...
        for blob in [stored[0], *stored[2:], ALICE.encode()]:
            assert found(store_dir, chunks(blob)), "the scan must see what is stored"
        # ... while plaintexts and the raw DEK never reach a file at all.
        assert found(store_dir, [*plaintexts(), dek]) == {}

        receipt = vault.erase(ALICE, "erasure-req-0001")

        # No VACUUM ran: secure_delete zeroed the cells and pages, the checkpoint emptied the WAL.
        assert Path(f"{path}-wal").stat().st_size == 0
        needles = [*plaintexts(), *(p for blob in stored for p in chunks(blob)), ALICE.encode()]
        assert found(store_dir, needles) == {}
        assert vault.resolve(kept) == "bob-keeps-this"
        assert receipt.ref_ids == tuple(sorted(r.ref_id for r in alice))
    # Closed (the WAL and SHM files are gone) and reopened: still nothing.
    assert found(store_dir, needles) == {}
    with Vault.open(path, kek) as vault:
        assert vault.resolve(kept) == "bob-keeps-this"
    assert found(store_dir, needles) == {}


def test_without_secure_delete_the_scan_finds_deleted_bytes(store_dir: Path) -> None:
    """Negative control: the scan above is sensitive enough to catch a missing secure_delete."""
    path = store_dir / "plain.db"
    marker = b"DELETED-BUT-STILL-THERE-" * 4
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA secure_delete = OFF")
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v BLOB)")
    db.execute("INSERT INTO t VALUES (1, ?), (2, ?)", (marker, b"kept"))
    db.execute("DELETE FROM t WHERE k = 1")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    assert found(store_dir, [marker]) == {marker: ["plain.db"]}


def test_erase_semantics_and_receipt(store_dir: Path) -> None:
    clock = ManualClock(1_700_000_000.0)
    with Vault.open(store_dir / "keys.db", Kek.generate(), clock=clock) as vault:
        a1, a2 = vault.put(CARD, ALICE), vault.put(IBAN, ALICE)
        b = vault.put("bob's", BOB)
        bob_commitment = vault.commitment(b)
        clock.advance(60)
        receipt = vault.erase(ALICE, "req-1")
        assert receipt == ErasureReceipt(
            request_id="req-1",
            subject_hash=hashlib.sha256(ALICE.encode()).hexdigest(),
            ref_ids=tuple(sorted((a1.ref_id, a2.ref_id))),
            erased_at=datetime.fromtimestamp(1_700_000_060.0, UTC),
        )
        for ref in (a1, a2):
            with pytest.raises(SecretError, match="was erased") as info:
                vault.resolve(ref)
            assert info.value.tombstoned is True
            assert vault.commitment(ref) is None
            assert vault.is_tombstoned(ref) is True
        assert vault.refs_of(ALICE) == []
        # Other subjects are unaffected.
        assert vault.resolve(b) == "bob's"
        assert vault.commitment(b) == bob_commitment
        assert vault.is_tombstoned(b) is False
        assert vault.refs_of(BOB) == [b]
        # A subject can come back with a fresh key; old refs stay erased.
        a3 = vault.put("new", ALICE)
        assert vault.resolve(a3) == "new" and vault.is_tombstoned(a1)


def test_erasing_an_unknown_subject_returns_an_empty_receipt(store_dir: Path) -> None:
    with Vault.open(store_dir / "keys.db", Kek.generate()) as vault:
        kept = vault.put("x", BOB)
        receipt = vault.erase("nobody", "req-2")
        assert receipt.ref_ids == ()
        assert receipt.subject_hash == subject_hash("nobody")
        assert vault.erase(ALICE, "req-3").ref_ids == ()
        assert vault.resolve(kept) == "x"


def test_tombstones_survive_reopening_and_hold_no_subject_id(store_dir: Path) -> None:
    kek = Kek.generate()
    path = store_dir / "keys.db"
    with Vault.open(path, kek) as vault:
        ref = vault.put(CARD, ALICE)
        vault.erase(ALICE, "req-4")
    with Vault.open(path, kek) as vault:
        assert vault.is_tombstoned(ref)
        with pytest.raises(SecretError) as info:
            vault.resolve(ref)
        assert info.value.tombstoned is True
        assert vault.commitment(ref) is None
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT ref_id, subject_hash, request_id FROM tombstones").fetchall()
        assert rows == [(ref.ref_id, subject_hash(ALICE), "req-4")]
        assert db.execute("SELECT count(*) FROM subjects").fetchone() == (0,)
        assert db.execute("SELECT count(*) FROM secrets").fetchone() == (0,)


def test_rotation_leaves_no_old_wrapped_key_in_any_file(store_dir: Path) -> None:
    kek = Kek.generate()
    with Vault.open(store_dir / "keys.db", kek) as vault:
        old = [vault.put(i, f"s-{i}") for i in range(4)]
        wrapped = [sensitive(vault, kek, f"s-{i}", [ref])[0] for i, ref in enumerate(old)]
        assert set(found(store_dir, wrapped)) == set(wrapped)
        vault.rotate_kek(Kek.generate())
        assert found(store_dir, wrapped) == {}


def test_erase_validates_its_arguments(store_dir: Path) -> None:
    with Vault.open(store_dir / "keys.db", Kek.generate()) as vault:
        with pytest.raises(VaultError, match="request_id"):
            vault.erase(ALICE, "")
        with pytest.raises(VaultError, match="subject"):
            vault.erase("", "req")
