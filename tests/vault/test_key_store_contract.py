"""The vault on both key stores (a SQLite file, PostgreSQL tables): what a data-protection
officer relies on holds on each, including when two instances share the PostgreSQL one."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from governance.storage.database_url import DatabaseUrl
from kernel.capability import SecretError
from vault import Kek, Vault, WrongKekError
from vault.store import TABLE_COLUMNS, KeyStorage


def key_store(db: str) -> KeyStorage | Path:
    """What `Vault.open` takes for the ledger database `db`: a SQLite key store file beside it,
    or a new PostgreSQL key store in its schema."""
    url = DatabaseUrl.parse(db)
    if url.path is not None:
        return url.path.with_name(url.path.name + ".keys")
    from vault.postgres_store import PostgresKeyStore

    assert url.dsn is not None
    return PostgresKeyStore(url.dsn, schema=url.schema, where=str(url))


@pytest.fixture
def kek() -> Kek:
    return Kek.generate()


@pytest.fixture
def vault(ledger_db: str, kek: Kek) -> Iterator[Vault]:
    with Vault.open(key_store(ledger_db), kek) as opened:
        yield opened


def test_secrets_round_trip_and_survive_reopening(ledger_db: str, kek: Kek) -> None:
    with Vault.open(key_store(ledger_db), kek) as vault:
        ref = vault.put({"iban": "DE89 3704 0044 0532 0130 00"}, "cust-7")
        commitment = vault.commitment(ref)
    with Vault.open(key_store(ledger_db), kek) as vault:
        assert vault.resolve(ref) == {"iban": "DE89 3704 0044 0532 0130 00"}
        assert vault.commitment(ref) == commitment
        assert vault.refs_of("cust-7") == [ref]


def test_erase_tombstones_every_secret_of_the_subject(vault: Vault) -> None:
    refs = [vault.put(f"secret-{i}", "cust-7") for i in range(3)]
    other = vault.put("kept", "cust-8")
    receipt = vault.erase("cust-7", "req-1")
    assert sorted(receipt.ref_ids) == sorted(ref.ref_id for ref in refs)
    for ref in refs:
        assert vault.is_tombstoned(ref)
        with pytest.raises(SecretError, match="erased") as caught:
            vault.resolve(ref)
        assert caught.value.tombstoned
        assert vault.commitment(ref) is None
    assert vault.resolve(other) == "kept"
    # New data about the subject after the erasure is a new key, readable again.
    fresh = vault.put("after", "cust-7")
    assert vault.resolve(fresh) == "after"


def test_a_wrong_kek_is_refused_and_rotation_retires_the_old_one(ledger_db: str, kek: Kek) -> None:
    with Vault.open(key_store(ledger_db), kek) as vault:
        ref = vault.put("value", "cust-1")
    with pytest.raises(WrongKekError):
        Vault.open(key_store(ledger_db), Kek.generate())
    new = Kek.generate()
    with Vault.open(key_store(ledger_db), kek) as vault:
        assert vault.rotate_kek(new) == 1
    with pytest.raises(WrongKekError):
        Vault.open(key_store(ledger_db), kek)
    with Vault.open(key_store(ledger_db), new) as vault:
        assert vault.resolve(ref) == "value"


def test_two_instances_sealing_a_new_subject_at_once_share_one_key(
    ledger_db: str, kek: Kek
) -> None:
    vaults = [Vault.open(key_store(ledger_db), kek) for _ in range(2)]
    start = threading.Barrier(2)
    refs: list[list[object]] = [[], []]

    def seal(n: int) -> None:
        start.wait()
        for i in range(20):
            refs[n].append(vaults[n].put(f"{n}-{i}", f"subject-{i}"))

    try:
        threads = [threading.Thread(target=seal, args=(n,)) for n in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        # Each instance reads every secret, its own and the other's: one DEK per subject.
        for vault in vaults:
            for n in range(2):
                assert [vault.resolve(ref) for ref in refs[n]] == [f"{n}-{i}" for i in range(20)]
    finally:
        for vault in vaults:
            vault.close()


def test_an_erase_racing_new_secrets_never_deletes_without_a_tombstone(
    ledger_db: str, kek: Kek
) -> None:
    writer, eraser = (Vault.open(key_store(ledger_db), kek) for _ in range(2))
    stored: list[object] = []
    failures: list[Exception] = []
    done = threading.Event()

    def write() -> None:
        while not done.is_set():
            try:
                stored.append(writer.put("x", "churn"))
            except Exception as exc:  # the subject vanished under it: refused, not lost
                failures.append(exc)

    thread = threading.Thread(target=write)
    thread.start()
    try:
        for i in range(15):
            eraser.erase("churn", f"req-{i}")
    finally:
        done.set()
        thread.join()
    eraser.erase("churn", "req-last")
    try:
        for ref in stored:  # every secret that was stored is either erased or still readable
            assert eraser.is_tombstoned(ref), ref  # ...and after the last erase, all erased
        assert all("erased" in str(exc) or "subject" in str(exc) for exc in failures), failures
    finally:
        writer.close()
        eraser.close()


def test_a_store_copies_into_another_under_the_same_kek(
    ledger_db: str, tmp_path: Path, kek: Kek
) -> None:
    with Vault.open(key_store(ledger_db), kek) as source:
        live = source.put("live", "cust-1")
        gone = source.put("gone", "cust-2")
        source.erase("cust-2", "req-1")
        rows = {table: source.store.dump(table) for table in TABLE_COLUMNS}
    with Vault.open(tmp_path / "copy.keys", kek) as copy:
        copy.store.load(rows)
        assert copy.resolve(live) == "live"
        assert copy.is_tombstoned(gone)
