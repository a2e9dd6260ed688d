"""The Vault: round trips, integrity binding, KEKs, rotation, schema, file modes, threads."""

from __future__ import annotations

import os
import sqlite3
import stat
import threading
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from kernel.capability import CapabilityRef, SecretError, SecretResolver, commitment
from vault import (
    SCHEMA_VERSION,
    Kek,
    KekError,
    KeyStoreError,
    SchemaVersionError,
    TamperedError,
    Vault,
    VaultError,
    WrongKekError,
    crypto,
)


@pytest.fixture
def kek() -> Kek:
    return Kek.generate()


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "keys.db"


@pytest.fixture
def vault(path: Path, kek: Kek) -> Iterator[Vault]:
    with Vault.open(path, kek) as opened:
        yield opened


def raw(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None)


VALUES: list[Any] = [
    "4111-1111-1111-1111-SECRET",
    "",
    "ünïcødé ✓ 🔑",
    0,
    -(2**53 - 1),
    3.25,
    True,
    False,
    None,
    [],
    {},
    [1, "two", None, [3.5]],
    {"b": {"nested": [True, {"x": "y"}]}, "a": 1},
]


@pytest.mark.parametrize("value", VALUES, ids=repr)
def test_round_trip(vault: Vault, value: Any) -> None:
    ref = vault.put(value, "alice")
    assert vault.resolve(ref) == value
    assert vault.resolve(ref.uri) == value  # the string form in the state works too
    assert not vault.is_tombstoned(ref)


def test_values_come_back_in_their_canonical_json_form(vault: Vault) -> None:
    ref = vault.put({"amount": Decimal("10.50"), "tags": ("a", "b"), "n": 1.0}, "alice")
    assert vault.resolve(ref) == {"amount": "10.50", "tags": ["a", "b"], "n": 1}


def test_round_trip_survives_reopening(path: Path, kek: Kek) -> None:
    with Vault.open(path, kek) as vault:
        refs = [vault.put(v, "alice") for v in VALUES]
    with Vault.open(path, kek) as vault:
        assert [vault.resolve(r) for r in refs] == VALUES
        assert vault.refs_of("alice") == refs


def test_vault_is_a_secret_resolver(vault: Vault) -> None:
    assert isinstance(vault, SecretResolver)
    resolver: SecretResolver = vault  # and statically (mypy checks the signatures)
    assert resolver is vault


def test_unknown_and_invalid_refs(vault: Vault) -> None:
    unknown = CapabilityRef.new()
    with pytest.raises(SecretError, match="unknown secret") as info:
        vault.resolve(unknown)
    assert info.value.tombstoned is False
    assert vault.commitment(unknown) is None
    assert vault.is_tombstoned(unknown) is False
    with pytest.raises(SecretError, match="not a vault://secret"):
        vault.resolve("https://example.com")


def test_commitment_is_the_kernel_commitment_and_stable(path: Path, kek: Kek) -> None:
    with Vault.open(path, kek) as vault:
        first = vault.put("4111-1111-1111-1111-SECRET", "alice")
        second = vault.put("4111-1111-1111-1111-SECRET", "alice")
        row = vault._store.secret(first.ref_id)
        assert row is not None
        salt, value = vault._decrypt(row)
        assert value == "4111-1111-1111-1111-SECRET"
        assert len(salt) == crypto.SALT_SIZE
        expected = commitment(salt, "4111-1111-1111-1111-SECRET")
        assert vault.commitment(first) == expected
        # Same value, different salt: commitments do not link equal secrets.
        assert vault.commitment(second) != expected
    with Vault.open(path, kek) as vault:
        assert vault.commitment(first) == expected


def test_put_validates_subject_and_value(vault: Vault) -> None:
    with pytest.raises(VaultError, match="subject must be a non-empty string"):
        vault.put("x", "")
    with pytest.raises(VaultError, match="subject"):
        vault.put("x", None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="canonical JSON"):
        vault.put(float("nan"), "alice")
    assert vault.refs_of("alice") == []


def test_refs_of_lists_only_that_subjects_live_refs(vault: Vault) -> None:
    a = [vault.put(i, "alice") for i in range(3)]
    b = vault.put("b", "bob")
    assert sorted(vault.refs_of("alice"), key=str) == sorted(a, key=str)
    assert vault.refs_of("bob") == [b]
    assert vault.refs_of("nobody") == []


# -- integrity: ciphertexts and keys are bound to their rows ----------------------------------


def _swap(db: sqlite3.Connection, table: str, key: str, columns: str, a: str, b: str) -> None:
    cols = [c.strip() for c in columns.split(",")]
    row_a = db.execute(f"SELECT {columns} FROM {table} WHERE {key} = ?", (a,)).fetchone()
    row_b = db.execute(f"SELECT {columns} FROM {table} WHERE {key} = ?", (b,)).fetchone()
    sets = ", ".join(f"{c} = ?" for c in cols)
    db.execute(f"UPDATE {table} SET {sets} WHERE {key} = ?", (*row_b, a))
    db.execute(f"UPDATE {table} SET {sets} WHERE {key} = ?", (*row_a, b))


def _three_secrets(path: Path, kek: Kek) -> tuple[CapabilityRef, CapabilityRef, CapabilityRef]:
    with Vault.open(path, kek) as vault:
        return (
            vault.put("alice-card-SECRET", "alice"),
            vault.put("alice-iban-SECRET", "alice"),
            vault.put("bob-card-SECRET", "bob"),
        )


def test_ciphertext_swapped_between_refs_of_one_subject_fails(path: Path, kek: Kek) -> None:
    a1, a2, _ = _three_secrets(path, kek)
    with raw(path) as db:
        _swap(db, "secrets", "ref_id", "nonce, ciphertext", a1.ref_id, a2.ref_id)
    with Vault.open(path, kek) as vault:
        for ref in (a1, a2):
            with pytest.raises(TamperedError, match="failed authentication") as info:
                vault.resolve(ref)
            assert isinstance(info.value, VaultError)
            with pytest.raises(TamperedError):
                vault.commitment(ref)


def test_ciphertext_swapped_between_subjects_fails(path: Path, kek: Kek) -> None:
    a1, _, b = _three_secrets(path, kek)
    with raw(path) as db:
        _swap(db, "secrets", "ref_id", "nonce, ciphertext", a1.ref_id, b.ref_id)
    with Vault.open(path, kek) as vault:
        for ref in (a1, b):
            with pytest.raises(TamperedError):
                vault.resolve(ref)


def test_secret_moved_to_another_subject_fails(path: Path, kek: Kek) -> None:
    a1, a2, b = _three_secrets(path, kek)
    with raw(path) as db:
        db.execute("UPDATE secrets SET subject = 'bob' WHERE ref_id = ?", (a1.ref_id,))
    with Vault.open(path, kek) as vault:
        with pytest.raises(TamperedError):
            vault.resolve(a1)
        assert vault.resolve(a2) == "alice-iban-SECRET"
        assert vault.resolve(b) == "bob-card-SECRET"


def test_wrapped_keys_swapped_between_subjects_fail(path: Path, kek: Kek) -> None:
    a1, _, b = _three_secrets(path, kek)
    with raw(path) as db:
        _swap(db, "subjects", "subject", "wrapped_dek", "alice", "bob")
    with Vault.open(path, kek) as vault:
        for ref in (a1, b):
            with pytest.raises(TamperedError, match="data key"):
                vault.resolve(ref)


def test_flipped_ciphertext_bit_fails(path: Path, kek: Kek) -> None:
    a1, a2, _ = _three_secrets(path, kek)
    with raw(path) as db:
        (blob,) = db.execute("SELECT ciphertext FROM secrets WHERE ref_id = ?", (a1.ref_id,))
        flipped = bytes([blob[0][0] ^ 1]) + blob[0][1:]
        db.execute("UPDATE secrets SET ciphertext = ? WHERE ref_id = ?", (flipped, a1.ref_id))
    with Vault.open(path, kek) as vault:
        with pytest.raises(TamperedError):
            vault.resolve(a1)
        assert vault.resolve(a2) == "alice-iban-SECRET"


# -- KEKs -------------------------------------------------------------------------------------


def test_wrong_kek_is_refused_on_open(path: Path, kek: Kek) -> None:
    _three_secrets(path, kek)
    other = Kek.generate()
    with pytest.raises(WrongKekError) as info:
        Vault.open(path, other)
    assert kek.kek_id in str(info.value) and other.kek_id in str(info.value)
    assert kek.to_base64() not in str(info.value)
    with pytest.raises(KekError, match="exactly 32 bytes"):
        Vault.open(path, b"too short")


def test_raw_bytes_are_accepted_as_kek(path: Path, kek: Kek) -> None:
    with Vault.open(path, kek.key) as vault:
        ref = vault.put("x", "alice")
    with Vault.open(path, kek) as vault:
        assert vault.resolve(ref) == "x"


SELECT_CIPHERTEXTS = "SELECT ref_id, nonce, ciphertext FROM secrets"


def test_rotation_keeps_secrets_and_retires_the_old_kek(path: Path, kek: Kek) -> None:
    new = Kek.generate()
    with Vault.open(path, kek) as vault:
        refs = {vault.put(f"value-{i}", f"subject-{i % 3}"): f"value-{i}" for i in range(9)}
        commitments = {ref: vault.commitment(ref) for ref in refs}
        with raw(path) as db:
            before = {r: (n, c) for r, n, c in db.execute(SELECT_CIPHERTEXTS)}
        assert vault.rotate_kek(new) == 3
        assert vault.kek_id == new.kek_id
        assert {ref: vault.resolve(ref) for ref in refs} == refs
        assert {ref: vault.commitment(ref) for ref in refs} == commitments
        vault.put("after rotation", "subject-0")
        keys = vault._store.subject_keys()
    assert {key.kek_id for key in keys} == {new.kek_id}
    with raw(path) as db:
        after = {r: (n, c) for r, n, c in db.execute(SELECT_CIPHERTEXTS)}
    assert {k: v for k, v in after.items() if k in before} == before  # ciphertexts untouched
    with pytest.raises(WrongKekError):
        Vault.open(path, kek)
    for key in keys:  # and the old KEK cannot unwrap any stored DEK
        with pytest.raises(TamperedError):
            crypto.unwrap_dek(kek.key, new.kek_id, key.subject, key.wrapped_dek)
    with Vault.open(path, new) as vault:
        assert {ref: vault.resolve(ref) for ref in refs} == refs


def test_rotation_with_another_process_stale_kek_is_refused(path: Path, kek: Kek) -> None:
    with Vault.open(path, kek) as stale, Vault.open(path, kek) as rotator:
        ref = stale.put("x", "alice")
        rotator.rotate_kek(Kek.generate())
        with pytest.raises(WrongKekError, match="rotated by another process"):
            stale.resolve(ref)


# -- the file ---------------------------------------------------------------------------------


def test_newer_schema_version_is_refused(path: Path, kek: Kek) -> None:
    Vault.open(path, kek).close()
    with raw(path) as db:
        db.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    with pytest.raises(SchemaVersionError, match="upgrade ledgerflow") as info:
        Vault.open(path, kek)
    assert f"schema version {SCHEMA_VERSION + 1}" in str(info.value)


def test_missing_directory_is_a_clear_error(tmp_path: Path, kek: Kek) -> None:
    with pytest.raises(KeyStoreError, match="cannot create key store"):
        Vault.open(tmp_path / "absent" / "keys.db", kek)


def test_foreign_files_are_refused(tmp_path: Path, kek: Kek) -> None:
    other = tmp_path / "other.db"
    with raw(other) as db:
        db.execute("CREATE TABLE t (x)")
    with pytest.raises(KeyStoreError, match="not a key store"):
        Vault.open(other, kek)
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite at all, just some bytes" * 100)
    with pytest.raises(KeyStoreError, match="not a usable key store"):
        Vault.open(junk, kek)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_files_are_private(tmp_path: Path, kek: Kek) -> None:
    old = os.umask(0)  # even with a permissive umask
    try:
        path = tmp_path / "keys.db"
        with Vault.open(path, kek) as vault:
            vault.put("x", "alice")
            files = [path, Path(f"{path}-wal"), Path(f"{path}-shm")]
            assert all(f.exists() for f in files)
            assert {f.name: _mode(f) for f in files} == {f.name: 0o600 for f in files}
    finally:
        os.umask(old)


def test_an_existing_permissive_file_is_tightened(path: Path, kek: Kek) -> None:
    Vault.open(path, kek).close()
    path.chmod(0o644)
    Vault.open(path, kek).close()
    assert _mode(path) == 0o600


def test_closed_vault_refuses_work(path: Path, kek: Kek) -> None:
    vault = Vault.open(path, kek)
    ref = vault.put("x", "alice")
    vault.close()
    vault.close()  # idempotent
    with pytest.raises(KeyStoreError, match="closed"):
        vault.resolve(ref)


# -- threads ----------------------------------------------------------------------------------


def test_concurrent_put_resolve_and_erase(vault: Vault) -> None:
    errors: list[BaseException] = []
    start = threading.Barrier(7)

    def worker(n: int) -> None:
        try:
            start.wait()
            for i in range(25):
                value = {"worker": n, "i": i}
                ref = vault.put(value, f"subject-{n}")
                assert vault.resolve(ref) == value
                assert vault.commitment(ref) is not None
        except BaseException as exc:
            errors.append(exc)

    def eraser() -> None:
        try:
            start.wait()
            for i in range(10):
                ref = vault.put(i, "churn")
                vault.erase("churn", f"req-{i}")
                assert vault.is_tombstoned(ref)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    threads.append(threading.Thread(target=eraser))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert all(len(vault.refs_of(f"subject-{n}")) == 25 for n in range(6))
