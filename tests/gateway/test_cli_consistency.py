"""Checks against a checkpoint the auditor holds, from the command line: a ledger that only grew
passes; one restored from an older copy (rollback) or rebuilt with the same key and a different
history (fork) is reported with both roots."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest

from gateway.application.principal import Principal
from gateway.application.service import LedgerflowService
from gateway.application.workspace import Workspace
from tests.gateway.test_cli_ledger import PAYMENT_FLOW, TOOLS, ledgerflow, ok


def run_once(db: Path, order: str = "A-1") -> None:
    context = json.dumps({"order_id": order, "amount": 10})
    ok(ledgerflow("run", PAYMENT_FLOW, "--tools", TOOLS, "--context", context, "--db", str(db)))


def keep_checkpoint(db: Path, note: Path) -> int:
    written = ok(ledgerflow("checkpoint", "--out", str(note), "--db", str(db)))
    return int(written.split("size ")[1].split()[0])


def copy_ledger(source: Path, target: Path) -> None:
    """A file-level copy of a closed ledger, as a backup would take it."""
    for suffix in ("", "-wal", "-shm", ".kek", ".signing-key", ".keys"):
        path = Path(f"{source}{suffix}")
        if path.exists():
            shutil.copy2(path, f"{target}{suffix}")


def rebuild_with_the_same_key(ledger: Path, tmp_path: Path) -> Path:
    """A ledger of the same origin (the file's stem) and signing key, with another, longer
    history: what someone holding the key could build to replace the real one."""
    rebuilt = tmp_path / "rebuilt" / "ledger.db"
    rebuilt.parent.mkdir()
    shutil.copy2(f"{ledger}.signing-key", f"{rebuilt}.signing-key")
    for order in ("B-1", "B-2", "B-3"):
        run_once(rebuilt, order)
    return rebuilt


@pytest.fixture
def ledger(tmp_path: Path) -> Path:
    db = tmp_path / "ledger.db"
    run_once(db)
    return db


def key_of(db: Path) -> str:
    return ok(ledgerflow("pubkey", "--db", str(db))).strip()


def test_a_ledger_that_only_grew_is_consistent_with_the_old_checkpoint(
    ledger: Path, tmp_path: Path
) -> None:
    note = tmp_path / "cp.note"
    size = keep_checkpoint(ledger, note)
    assert note.read_text().startswith(f"ledgerflow/ledger\n{size}\n")
    run_once(ledger, "A-2")
    checked = ledgerflow(
        "verify-consistency", "--old", str(note), "--key", key_of(ledger), "--db", str(ledger)
    )
    out = ok(checked)
    assert out.startswith(f"OK: consistent: the log grew from size {size}, root ")
    # Right after the checkpoint, too (the same size: an empty proof, equal roots).
    fresh = tmp_path / "now.note"
    keep_checkpoint(ledger, fresh)
    again = ledgerflow(
        "verify-consistency", "--old", str(fresh), "--key", key_of(ledger), "--db", str(ledger)
    )
    assert ok(again).startswith("OK: consistent")


def test_a_ledger_restored_from_an_older_copy_is_a_rollback(ledger: Path, tmp_path: Path) -> None:
    backup = tmp_path / "backup" / "ledger.db"
    backup.parent.mkdir()
    copy_ledger(ledger, backup)  # taken now: before the runs the checkpoint will cover
    run_once(ledger, "A-2")
    run_once(ledger, "A-3")
    note = tmp_path / "cp.note"
    size = keep_checkpoint(ledger, note)
    key = key_of(ledger)
    copy_ledger(backup, ledger)  # the old copy put back
    checked = ledgerflow(
        "verify-consistency", "--old", str(note), "--key", key, "--db", str(ledger)
    )
    out = ok(checked, 1)
    assert out.startswith("FAILED: ROLLBACK: the log is now size ")
    assert f"smaller than your checkpoint's size {size}, root " in out


def test_a_ledger_rebuilt_with_the_same_key_and_another_history_is_a_fork(
    ledger: Path, tmp_path: Path
) -> None:
    note = tmp_path / "cp.note"
    size = keep_checkpoint(ledger, note)
    key = key_of(ledger)
    rebuilt = rebuild_with_the_same_key(ledger, tmp_path)
    assert key_of(rebuilt) == key
    checked = ledgerflow(
        "verify-consistency", "--old", str(note), "--key", key, "--db", str(rebuilt)
    )
    out = ok(checked, 1)
    assert out.startswith("FAILED: FORK: the log at size ")
    assert f"does not extend your checkpoint's size {size}, root " in out


def test_a_bundle_from_the_mcp_tool_is_checked_offline_and_a_wrong_key_refused(
    ledger: Path, tmp_path: Path
) -> None:
    note = tmp_path / "cp.note"
    size = keep_checkpoint(ledger, note)
    run_once(ledger, "A-2")
    bundle_file = tmp_path / "consistency.json"

    async def ask() -> dict[str, object]:
        async with await Workspace.open(ledger) as workspace:
            service = await LedgerflowService.open(workspace)
            try:
                return await service.get_consistency_proof(Principal.local_operator(), size)
            finally:
                await service.close()

    bundle = asyncio.run(ask())
    bundle_file.write_text(json.dumps(bundle))
    key = key_of(ledger)
    offline = ["verify-consistency", "--old", str(note), "--bundle", str(bundle_file)]
    assert ok(ledgerflow(*offline, "--key", key)).startswith("OK: consistent")

    other = tmp_path / "other" / "ledger.db"
    other.parent.mkdir()
    run_once(other)
    refused = ledgerflow(*offline, "--key", key_of(other))
    assert ok(refused, 1).startswith(f"FAILED: --old {note}: ")

    tampered = dict(bundle, consistency_proof=[])
    bundle_file.write_text(json.dumps(tampered))
    broken = ok(ledgerflow(*offline, "--key", key), 1)
    assert broken.startswith("FAILED: ")


def test_verify_proof_checks_the_bundle_against_a_checkpoint_the_auditor_holds(
    ledger: Path, tmp_path: Path
) -> None:
    note = tmp_path / "cp.note"
    keep_checkpoint(ledger, note)
    run_once(ledger, "A-2")
    key = key_of(ledger)
    bundle = tmp_path / "proof.json"
    made = ledgerflow(
        "proof", "--seq", "1", "--since", str(note), "--out", str(bundle), "--db", str(ledger)
    )
    ok(made)
    checked = ok(ledgerflow("verify-proof", str(bundle), "--key", key, "--checkpoint", str(note)))
    assert checked.splitlines()[1].startswith("OK: consistent: the log grew from size ")

    # A bundle without the consistency proof cannot answer the question.
    plain = tmp_path / "plain.json"
    ok(ledgerflow("proof", "--seq", "1", "--out", str(plain), "--db", str(ledger)))
    refused = ok(ledgerflow("verify-proof", str(plain), "--key", key, "--checkpoint", str(note)), 1)
    assert "carries no consistency proof" in refused

    # A bundle from a ledger rebuilt with the same key: its own proof holds, the fork shows.
    rebuilt = rebuild_with_the_same_key(ledger, tmp_path)
    forked = tmp_path / "forked.json"
    ok(
        ledgerflow(
            "proof", "--seq", "1", "--since", str(note), "--out", str(forked), "--db", str(rebuilt)
        )
    )
    assert ok(ledgerflow("verify-proof", str(forked), "--key", key))  # alone it checks out
    caught = ok(ledgerflow("verify-proof", str(forked), "--key", key, "--checkpoint", str(note)), 1)
    assert caught.startswith("FAILED: the bundle's checkpoint against yours: FORK: ")
