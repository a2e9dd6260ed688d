"""The ledger from the command line: keys, audits, proofs, queries and erasure, each command a
real subprocess over one ledger."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from kernel import Trace, TraceStatus
from kernel.capability import TOMBSTONE

REPO = Path(__file__).resolve().parents[2]
PAYMENT_FLOW = "examples/payment_flow.yaml"
TOOLS = "examples.payments:TOOLS"
PLAINTEXT = "Jane-Q-Public-ORDER-7731"
SECRET_ORDER = json.dumps({"order_id": {"$secret": PLAINTEXT, "subject": "cust-42"}, "amount": 250})


def ledgerflow(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("LEDGERFLOW_DB", "LEDGERFLOW_KEK")}
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def ok(result: subprocess.CompletedProcess[str], code: int = 0) -> str:
    assert result.returncode == code, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    return result.stdout


class Ledger:
    """One ledger file in tmp_path with a run suspended on a sealed secret: its five envelopes
    and the access envelope of the `run` command that started it."""

    def __init__(self, tmp_path: Path) -> None:
        self.dir = tmp_path
        self.db = str(tmp_path / "ledger.db")
        flags = ["--tools", TOOLS, "--context", SECRET_ORDER, "--db", self.db, "--json"]
        run = ledgerflow("run", PAYMENT_FLOW, *flags)
        self.trace = Trace.model_validate_json(ok(run))
        self.key = ok(ledgerflow("pubkey", "--db", self.db)).strip()

    def __call__(self, command: str, *args: str) -> subprocess.CompletedProcess[str]:
        return ledgerflow(command, *args, "--db", self.db)


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    return Ledger(tmp_path)


def test_companion_files_are_created_private(ledger: Ledger) -> None:
    assert ledger.trace.status is TraceStatus.SUSPENDED
    for suffix in ("", ".keys", ".kek", ".signing-key", ".lock"):
        path = Path(ledger.db + suffix)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert ledger.key.startswith("ledgerflow/ledger+")
    assert "PRIVATE" not in ledger.key


def test_verify_with_the_key_and_detect_a_wrong_one(ledger: Ledger) -> None:
    out = ok(ledger("verify", "--key", ledger.key))
    assert "entries      6 checked" in out and "1 given" in out and "result       OK" in out
    assert "stored in the file" in ok(ledger("verify"))
    other = ok(ledgerflow("pubkey", "--db", str(ledger.dir / "other.db"))).strip()
    key_file = ledger.dir / "keys.txt"
    key_file.write_text(other + "\n", encoding="utf-8")
    wrong = ledger("verify", "--key", "@" + str(key_file))
    assert "result       FAILED" in ok(wrong, 1)
    private = (ledger.dir / "ledger.db.signing-key").read_text().strip()
    refused = ledger("verify", "--key", private)
    assert refused.returncode == 2 and private not in refused.stderr


def test_proof_bundle_verifies_alone_and_tampering_is_caught(ledger: Ledger) -> None:
    bundle_file = ledger.dir / "proof.json"
    ok(ledger("proof", "--seq", "3", "--out", str(bundle_file)))
    good = ledgerflow("verify-proof", str(bundle_file), "--key", ledger.key)
    assert ok(good).startswith("OK: envelope seq 3 (step of ")

    bundle = json.loads(bundle_file.read_text())
    assert bundle["envelope"]["step_id"] == "initiate"
    bundle["envelope"]["status"] = "SUCCESS"
    tampered = ledger.dir / "tampered.json"
    tampered.write_text(json.dumps(bundle), encoding="utf-8")
    bad = ledgerflow("verify-proof", str(tampered), "--key", ledger.key)
    assert ok(bad, 1).startswith("FAILED: ")
    assert ledger("proof", "--seq", "99").returncode == 1
    not_json = ledgerflow("verify-proof", ledger.db, "--key", ledger.key)
    assert not_json.returncode == 2


def test_checkpoint_prints_size_root_and_signed_note(ledger: Ledger) -> None:
    out = ok(ledger("checkpoint"))
    assert out.startswith("size         6\nroot         ")
    assert "\nledgerflow/ledger\n6\n" in out and "\n— ledgerflow/ledger " in out


def test_envelopes_as_table_and_json_lines(ledger: Ledger) -> None:
    tid = ledger.trace.trace_id
    lines = ok(ledger("envelopes", "--execution", tid, "--jsonl")).splitlines()
    envelopes = [json.loads(line) for line in lines]
    kinds = ["run_started", "step", "step", "step", "suspend", "access"]
    assert [e["kind"] for e in envelopes] == kinds
    assert envelopes[-1]["payload"]["tool"] == "run_program"  # the CLI's call, recorded
    assert envelopes[-1]["payload"]["principal"].startswith("local:")
    assert [e["seq"] for e in envelopes] == list(range(6))
    assert all(e["execution_id"] == tid for e in envelopes)
    table = ok(ledger("envelopes", "--kind", "step", "--limit", "2"))
    header = "seq recorded at (UTC) kind execution step status"
    assert " ".join(table.splitlines()[0].split()) == header
    assert "amount_guard" in table and "initiate" not in table and table.endswith("2 envelopes\n")
    assert ok(ledger("envelopes", "--since", "2999-01-01")).endswith("0 envelopes\n")
    assert ledger("envelopes", "--since", "yesterday").returncode == 2


def test_erasure_leaves_tombstones_a_valid_ledger_and_no_plaintext(ledger: Ledger) -> None:
    tid = ledger.trace.trace_id
    assert ledger.trace.steps[0].output["order_id"]["$ref"].startswith("vault://secret/")
    receipt = ok(ledger("erase", "--subject", "cust-42", "--reason", "GDPR art. 17, ticket 9"))
    assert "refs erased  1\n" in receipt and "runs covered 1\n" in receipt
    assert "cust-42" not in receipt  # only its hash

    # The run goes on after the erasure: its new envelopes carry tombstones, which the ledger
    # accepts because the erase envelope covers the run.
    resumed = ledger("resume", tid, "--event", '{"status": "succeeded"}', "--tools", TOOLS)
    assert "SUCCESS" in ok(resumed)
    text = ok(ledger("trace", tid))
    assert f'"order_id": "{TOMBSTONE}"' in text
    stored = Trace.model_validate_json(ok(ledger("trace", tid, "--json")))
    assert stored.context["order_id"] == TOMBSTONE
    assert stored.final_output["order_id"] == TOMBSTONE
    assert "result       OK" in ok(ledger("verify", "--key", ledger.key))

    [erase] = [
        json.loads(line)
        for line in ok(ledger("envelopes", "--kind", "erase", "--jsonl")).splitlines()
    ]
    assert erase["payload"]["execution_ids"] == [tid]
    assert erase["payload"]["reason"] == "GDPR art. 17, ticket 9"

    files = [path for path in ledger.dir.rglob("*") if path.is_file()]
    assert {p.name for p in files} >= {"ledger.db", "ledger.db.keys", "ledger.db.kek"}
    for path in files:  # -wal and -shm files included, whenever they exist
        assert PLAINTEXT.encode() not in path.read_bytes(), path


def test_a_missing_key_is_never_replaced_silently(ledger: Ledger) -> None:
    moved = ledger.dir / "elsewhere.signing-key"
    Path(ledger.db + ".signing-key").rename(moved)
    refused = ledger("checkpoint")
    assert refused.returncode == 2, refused.stderr
    assert "signing key" in refused.stderr and "is missing" in refused.stderr
    assert not Path(ledger.db + ".signing-key").exists()
    assert ok(ledger("pubkey", "--signing-key", str(moved))).strip() == ledger.key
    Path(ledger.db + ".kek").unlink()
    no_kek = ledger("trace", ledger.trace.trace_id)
    assert no_kek.returncode == 2 and "refusing to make a new KEK" in no_kek.stderr
