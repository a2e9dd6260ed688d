"""verify_ledger against tampered ledger files: each change, made with plain sqlite3 (dropping the
append-only triggers where the attacker must), is caught at the right seq or checkpoint."""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from governance.checkpoint import Checkpoint, Signer, sign_checkpoint
from governance.envelope import EnvelopeDraft, GovernanceEnvelope, stored_entry_hash
from governance.ledger import Ledger
from governance.policy import PolicySnapshot
from governance.storage.ledger_port import row_values
from governance.verify import VerifyReport, verify_ledger_at
from kernel.capability import TOMBSTONE

ORIGIN = "ledgerflow.test/tamper"
SIGNER = Signer.generate(ORIGIN)
KEYS = [SIGNER.verifier().to_text()]
POLICY = PolicySnapshot(name="tamper-tests", max_steps=100)
SIZE = 60  # checkpoints at 20, 40 and 60


async def _build(path: Path) -> None:
    async with await Ledger.open_at(
        path, signer=SIGNER, origin=ORIGIN, policy=POLICY, checkpoint_every=20
    ) as ledger:
        for seq in range(SIZE):
            if seq == 50:
                await ledger.append("run-x", "erase", payload={"refs": ["sec_1"], "subject": "u1"})
            elif seq == 51:
                await ledger.append("run-x", "step", step_id="s", payload={"card": TOMBSTONE})
            else:
                await ledger.append(
                    f"run-{seq % 3}",
                    "step",
                    step_id=f"s{seq}",
                    status="SUCCESS",
                    payload={"i": seq, "cost": 0.25, "note": "ok"},
                    snapshot_hash=f"{seq:064x}",
                )


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("base") / "ledger.db"
    asyncio.run(_build(path))
    return path


@pytest.fixture
def ledger_file(base: Path, tmp_path: Path) -> Path:
    target = tmp_path / "ledger.db"
    for suffix in ("", "-wal", "-shm"):
        source = Path(f"{base}{suffix}")
        if source.exists():
            shutil.copy(source, f"{target}{suffix}")
    return target


def connect(path: Path, *, drop_triggers: bool = True) -> sqlite3.Connection:
    """A plain sqlite3 connection, as an attacker holding the file would use."""
    connection = sqlite3.connect(path, isolation_level=None)
    if drop_triggers:
        names = connection.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")
        for (name,) in names.fetchall():
            connection.execute(f"DROP TRIGGER {name}")
    return connection


def verify(path: Path, keys: list[str] | None = KEYS, **options: Any) -> VerifyReport:
    return asyncio.run(verify_ledger_at(path, keys, **options))


def assert_bad(
    report: VerifyReport, *, seq: int | None, checkpoint: int | None, reason: str
) -> None:
    assert not report.ok, report
    assert (report.first_bad_seq, report.bad_checkpoint) == (seq, checkpoint), report
    assert report.reason is not None
    assert reason in report.reason, report.reason


def envelope_at(connection: sqlite3.Connection, seq: int) -> GovernanceEnvelope:
    cursor = connection.execute("SELECT * FROM envelopes WHERE seq = ?", (seq,))
    names = [column[0] for column in cursor.description]
    data = dict(zip(names, cursor.fetchone(), strict=True))
    data["payload"] = json.loads(data["payload"])
    data["prev_hash"], data["entry_hash"] = data["prev_hash"].hex(), data["entry_hash"].hex()
    return GovernanceEnvelope.model_validate(data)


def reseal(envelope: GovernanceEnvelope, prev_hash: str, **changes: Any) -> GovernanceEnvelope:
    """`envelope` with `changes`, chained after `prev_hash` with a correct entry hash."""
    fields = {
        "execution_id": envelope.execution_id,
        "kind": envelope.kind,
        "policy_hash": envelope.policy_hash,
        "step_id": envelope.step_id,
        "status": envelope.status,
        "payload": envelope.payload,
        "canonical_snapshot_hash": envelope.canonical_snapshot_hash,
    }
    seq = changes.pop("seq", envelope.seq)
    recorded_at = changes.pop("recorded_at", envelope.recorded_at)
    fields.update(changes)
    return EnvelopeDraft.build(**fields).seal(seq, prev_hash, recorded_at)


def write(connection: sqlite3.Connection, envelope: GovernanceEnvelope, verb: str) -> None:
    connection.execute(
        f"{verb} envelopes VALUES (?,?,?,?,?,?,?,?,?,?,?)",
        row_values(envelope),
    )


@pytest.fixture
def attacker(ledger_file: Path) -> Iterator[sqlite3.Connection]:
    with connect(ledger_file) as connection:
        yield connection


# -- the untampered file ---------------------------------------------------------------------


def test_untampered_ledger_verifies(ledger_file: Path) -> None:
    report = verify(ledger_file)
    assert report == VerifyReport(ok=True, entries_checked=SIZE, checkpoints_checked=3)
    stored = verify(ledger_file, None)
    assert (stored.ok, stored.keys) == (True, "stored")
    assert verify(ledger_file, origin=ORIGIN).ok


def test_untrusted_key_or_origin_fails(ledger_file: Path) -> None:
    stranger = Signer.generate(ORIGIN).verifier().to_text()
    assert_bad(verify(ledger_file, [stranger]), seq=None, checkpoint=0, reason="known key")
    assert_bad(
        verify(ledger_file, origin="other.example/log"), seq=None, checkpoint=0, reason="origin"
    )


# -- envelopes -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "reason"),
    [("5", "entry_hash does not match"), ("{", "malformed envelope")],
)
def test_payload_bit_flip(
    ledger_file: Path, attacker: sqlite3.Connection, target: str, reason: str
) -> None:
    (payload,) = attacker.execute("SELECT payload FROM envelopes WHERE seq = 25").fetchone()
    data = bytearray(payload.encode())
    data[data.index(target.encode())] ^= 0x01  # '5' -> '4' (still JSON), '{' -> 'z' (not)
    attacker.execute("UPDATE envelopes SET payload = ? WHERE seq = 25", (data.decode(),))
    assert_bad(verify(ledger_file), seq=25, checkpoint=None, reason=reason)


def test_a_payload_respelled_as_the_same_json_still_verifies(
    ledger_file: Path, attacker: sqlite3.Connection
) -> None:
    # Not the bytes the entry hash was computed over, but their meaning: the verifier's fast
    # path (hashing the stored bytes) misses, and its slow path re-canonicalises and accepts.
    (payload,) = attacker.execute("SELECT payload FROM envelopes WHERE seq = 25").fetchone()
    respelled = json.dumps(json.loads(payload), indent=2)
    assert respelled != payload
    attacker.execute("UPDATE envelopes SET payload = ? WHERE seq = 25", (respelled,))
    assert verify(ledger_file).ok


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ('{"i": 1}', "entry_hash does not match"),  # a space: not canonical
        ('{"note":"ok","i":1}', "entry_hash does not match"),  # keys out of order
        ('{"i":1.0}', "entry_hash does not match"),  # 1.0 is written 1
        ('{"i":"\\u0041"}', "entry_hash does not match"),  # an escape JCS does not use
        ('{"x":NaN}', "malformed envelope"),
    ],
)
def test_a_payload_not_in_canonical_form_fails_even_with_its_hash_over_those_bytes(
    ledger_file: Path, payload: str, reason: str
) -> None:
    # Appended after the head with the triggers in place, its entry hash computed over the
    # bytes as stored: the hash matches, but those bytes are not what a writer seals.
    with connect(ledger_file, drop_triggers=False) as connection:
        head = envelope_at(connection, SIZE - 1)
        forged = _row_over_bytes(head, payload)
        connection.execute("INSERT INTO envelopes VALUES (?,?,?,?,?,?,?,?,?,?,?)", forged)
    assert_bad(verify(ledger_file), seq=SIZE, checkpoint=None, reason=reason)


def test_an_erasure_of_the_wrong_shape_is_a_finding(ledger_file: Path) -> None:
    with connect(ledger_file, drop_triggers=False) as connection:
        head = envelope_at(connection, SIZE - 1)
        forged = _row_over_bytes(head, '{"execution_ids":"x"}', kind="erase")
        connection.execute("INSERT INTO envelopes VALUES (?,?,?,?,?,?,?,?,?,?,?)", forged)
    assert_bad(verify(ledger_file), seq=SIZE, checkpoint=None, reason="malformed envelope")


def _row_over_bytes(head: GovernanceEnvelope, payload: str, kind: str = "step") -> tuple[Any, ...]:
    """A row after `head` holding `payload` as it is, its entry hash over exactly those bytes."""
    fields = (SIZE, "run-forged", "s", kind, "SUCCESS", head.policy_hash, None)
    at, prev = head.recorded_at + 1, head.entry_hash
    entry = stored_entry_hash(*fields, payload.encode(), at, prev)
    return (*fields, payload, at, bytes.fromhex(prev), bytes.fromhex(entry))


def test_entry_hash_bit_flip(ledger_file: Path, attacker: sqlite3.Connection) -> None:
    (entry_hash,) = attacker.execute("SELECT entry_hash FROM envelopes WHERE seq = 30").fetchone()
    flipped = bytearray(entry_hash)
    flipped[17] ^= 0x10
    attacker.execute("UPDATE envelopes SET entry_hash = ? WHERE seq = 30", (bytes(flipped),))
    assert_bad(verify(ledger_file), seq=30, checkpoint=None, reason="entry_hash does not match")


def test_deleted_middle_row(ledger_file: Path, attacker: sqlite3.Connection) -> None:
    attacker.execute("DELETE FROM envelopes WHERE seq = 33")
    assert_bad(verify(ledger_file), seq=33, checkpoint=None, reason="seq 33 is missing")


def test_swapped_rows(ledger_file: Path, attacker: sqlite3.Connection) -> None:
    attacker.execute("UPDATE envelopes SET seq = 1000 WHERE seq = 10")
    attacker.execute("UPDATE envelopes SET seq = 10 WHERE seq = 11")
    attacker.execute("UPDATE envelopes SET seq = 11 WHERE seq = 1000")
    assert_bad(verify(ledger_file), seq=10, checkpoint=None, reason="prev_hash")


def test_unknown_kind(ledger_file: Path, attacker: sqlite3.Connection) -> None:
    attacker.execute("UPDATE envelopes SET kind = 'bogus' WHERE seq = 7")
    assert_bad(verify(ledger_file), seq=7, checkpoint=None, reason="malformed envelope")


def test_truncated_tail_below_last_checkpoint(
    ledger_file: Path, attacker: sqlite3.Connection
) -> None:
    attacker.execute("DELETE FROM envelopes WHERE seq >= 45")
    assert_bad(verify(ledger_file), seq=45, checkpoint=2, reason="truncated")


def test_replace_into_is_blocked_by_triggers(ledger_file: Path) -> None:
    with connect(ledger_file, drop_triggers=False) as connection:
        forged = reseal(envelope_at(connection, 12), envelope_at(connection, 11).entry_hash)
        for verb in ("REPLACE INTO", "INSERT OR REPLACE INTO"):
            with pytest.raises(sqlite3.IntegrityError, match="seq must be"):
                write(connection, forged, verb)
    assert verify(ledger_file).ok


def test_replaced_row_is_caught_without_triggers(
    ledger_file: Path, attacker: sqlite3.Connection
) -> None:
    original = envelope_at(attacker, 12)
    changed = original.model_copy(update={"payload": {"i": 999}})  # keeps the old entry hash
    write(attacker, changed, "REPLACE INTO")
    assert_bad(verify(ledger_file), seq=12, checkpoint=None, reason="entry_hash does not match")


def test_replaced_row_with_recomputed_hash_breaks_the_next_link(
    ledger_file: Path, attacker: sqlite3.Connection
) -> None:
    original = envelope_at(attacker, 12)
    write(attacker, reseal(original, original.prev_hash, payload={"i": 999}), "REPLACE INTO")
    assert_bad(verify(ledger_file), seq=13, checkpoint=None, reason="prev_hash is not")


def test_rechained_tail_is_caught_by_the_signed_checkpoint(
    ledger_file: Path, attacker: sqlite3.Connection
) -> None:
    # The attacker rewrites seq 45.. with a valid chain: only the checkpoint root can tell.
    prev = envelope_at(attacker, 44).entry_hash
    for seq in range(45, SIZE):
        original = envelope_at(attacker, seq)
        changes = {"status": "FAILED"} if seq == 45 else {}
        forged = reseal(original, prev, **changes)
        write(attacker, forged, "REPLACE INTO")
        prev = forged.entry_hash
    assert_bad(verify(ledger_file), seq=40, checkpoint=2, reason="do not give its root")


def test_forged_tombstone_without_erasure(ledger_file: Path) -> None:
    # Correctly chained, so the triggers let it in: the tombstone rule catches it.
    with connect(ledger_file, drop_triggers=False) as connection:
        head = envelope_at(connection, SIZE - 1)
        forged = reseal(head, head.entry_hash, seq=SIZE, payload={"card": TOMBSTONE})
        assert forged.execution_id != "run-x"
        write(connection, forged, "INSERT INTO")
    assert_bad(verify(ledger_file), seq=SIZE, checkpoint=None, reason="tombstone")


def test_time_going_back(ledger_file: Path) -> None:
    with connect(ledger_file, drop_triggers=False) as connection:
        head = envelope_at(connection, SIZE - 1)
        forged = reseal(head, head.entry_hash, seq=SIZE, recorded_at=head.recorded_at - 1)
        write(connection, forged, "INSERT INTO")
    assert_bad(verify(ledger_file), seq=SIZE, checkpoint=None, reason="back in time")


def test_tampered_policy(ledger_file: Path, attacker: sqlite3.Connection) -> None:
    attacker.execute(
        "UPDATE policies SET body = ? WHERE policy_hash = ?",
        (PolicySnapshot(name="lax").canonical_bytes().decode(), POLICY.policy_hash),
    )
    assert_bad(verify(ledger_file), seq=0, checkpoint=None, reason="policy")


# -- checkpoints -----------------------------------------------------------------------------


def _checkpoint(connection: sqlite3.Connection, index: int) -> tuple[int, bytes, str]:
    size, root, note = connection.execute(
        "SELECT tree_size, root, note FROM checkpoints WHERE idx = ?", (index,)
    ).fetchone()
    return size, root, note


def test_checkpoint_signature_bit_flip(ledger_file: Path, attacker: sqlite3.Connection) -> None:
    _, _, note = _checkpoint(attacker, 1)
    text, signature_line = note.rstrip("\n").rsplit("\n", 1)
    prefix, encoded = signature_line.rsplit(" ", 1)
    raw = bytearray(base64.b64decode(encoded))
    raw[-1] ^= 0x01
    forged = f"{text}\n{prefix} {base64.b64encode(bytes(raw)).decode()}\n"
    attacker.execute("UPDATE checkpoints SET note = ? WHERE idx = 1", (forged,))
    assert_bad(verify(ledger_file), seq=None, checkpoint=1, reason="does not verify")


def test_older_checkpoint_replayed_as_newest(
    ledger_file: Path, attacker: sqlite3.Connection
) -> None:
    size, root, note = _checkpoint(attacker, 0)
    attacker.execute("INSERT INTO checkpoints VALUES (3, ?, ?, ?, 0)", (size, root, note))
    assert_bad(verify(ledger_file), seq=None, checkpoint=3, reason="replayed")


def test_two_checkpoints_of_one_size_with_different_roots(
    ledger_file: Path, attacker: sqlite3.Connection
) -> None:
    # A signer that forks its log: a second signed head of size 60 over other contents.
    other_root = bytes(32)
    note = sign_checkpoint(Checkpoint(ORIGIN, SIZE, other_root), [SIGNER]).decode()
    attacker.execute("INSERT INTO checkpoints VALUES (3, ?, ?, ?, 0)", (SIZE, other_root, note))
    assert_bad(verify(ledger_file), seq=None, checkpoint=3, reason="fork")


def test_deleted_checkpoint(ledger_file: Path, attacker: sqlite3.Connection) -> None:
    attacker.execute("DELETE FROM checkpoints WHERE idx = 1")
    assert_bad(verify(ledger_file), seq=None, checkpoint=1, reason="checkpoint 1 is missing")


def test_checkpoint_columns_differ_from_note(
    ledger_file: Path, attacker: sqlite3.Connection
) -> None:
    attacker.execute("UPDATE checkpoints SET root = ? WHERE idx = 2", (bytes(32),))
    assert_bad(verify(ledger_file), seq=None, checkpoint=2, reason="differ from its signed note")


def test_stored_keys_prove_only_internal_consistency(
    ledger_file: Path, attacker: sqlite3.Connection
) -> None:
    # The attacker swaps in its own key and re-signs every checkpoint with it.
    impostor = Signer.generate(ORIGIN)
    attacker.execute("DELETE FROM signing_keys")
    attacker.execute("INSERT INTO signing_keys VALUES (?, 0)", (impostor.verifier().to_text(),))
    for index in range(3):
        size, root, _ = _checkpoint(attacker, index)
        note = sign_checkpoint(Checkpoint(ORIGIN, size, root), [impostor]).decode()
        attacker.execute("UPDATE checkpoints SET note = ? WHERE idx = ?", (note, index))
    assert verify(ledger_file, None).ok  # consistent with itself...
    assert_bad(verify(ledger_file), seq=None, checkpoint=0, reason="known key")  # ...not trusted
