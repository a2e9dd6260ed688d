"""Witness cosignatures (C2SP tlog-witness): the ledger's checkpoints submitted to a witness
over real HTTP, their cosignatures kept and required by `verify --witnesses`, a forked ledger
refused by the witness and the refusal reported, and a serving process submitting by itself."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

from tests.processes import ledgerflow, serving_http
from tests.tlog.test_tlog import append
from tests.tlog.witness import Witness, serving


def ok(result: subprocess.CompletedProcess[str], code: int = 0) -> str:
    assert result.returncode == code, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    return result.stdout


def test_a_witness_cosigns_each_checkpoint_and_refuses_a_fork(tmp_path: Path) -> None:
    db = tmp_path / "a" / "ledger.db"
    db.parent.mkdir()
    append(db, 20)
    key = ok(ledgerflow("pubkey", "--db", str(db))).strip()
    witness = Witness("witness.test/w1", {"ledgerflow/ledger": key})
    with serving(witness) as url:
        assert ok(
            ledgerflow("witness", "add", "--url", url, "--key", witness.vkey, "--db", str(db))
        )
        unwitnessed = ledgerflow("verify", "--db", str(db), "--key", key, "--witnesses", "1")
        assert "no checkpoint has 1 cosignature(s)" in ok(unwitnessed, 1)

        first = ok(ledgerflow("witness", "submit", "--db", str(db)))
        assert first.startswith("witness.test/w1: cosigned (size ")
        append(db, 5)
        second = ok(ledgerflow("witness", "submit", "--db", str(db)))  # with a proof from before
        assert second.startswith("witness.test/w1: cosigned (size ")
        assert witness.requests == [200, 200]
        verified = ok(ledgerflow("verify", "--db", str(db), "--key", key, "--witnesses", "1"))
        assert "cosigned by witness.test/w1" in verified and "result" in verified
        assert verified.rstrip().endswith("OK")
        two = ledgerflow("verify", "--db", str(db), "--key", key, "--witnesses", "2")
        assert "FAILED: 2 witness cosignature(s) required" in ok(two, 1)
        other = Witness("witness.test/w1", {})  # same name, another key: not counted
        wrong = ledgerflow(
            "verify", "--db", str(db), "--key", key, "--witnesses", "1",
            "--witness-key", other.vkey,
        )  # fmt: skip
        ok(wrong, 1)

        # The same origin and key, another history: the witness refuses to cosign it.
        forked = tmp_path / "b" / "ledger.db"
        forked.parent.mkdir()
        shutil.copy2(f"{db}.signing-key", f"{forked}.signing-key")
        append(forked, 40)
        ok(ledgerflow("witness", "add", "--url", url, "--key", witness.vkey, "--db", str(forked)))
        refused = ok(ledgerflow("witness", "submit", "--db", str(forked)), 1)
        assert refused.startswith("witness.test/w1: refused (size ")
        assert "HTTP 422" in refused and "does not extend the one of size" in refused
        assert witness.requests[-2:] == [409, 422]  # told the size it cosigned, then the proof
        listed = ok(ledgerflow("witness", "list", "--db", str(forked)))
        assert "refused (HTTP 422)" in listed
        fork_verify = ledgerflow("verify", "--db", str(forked), "--key", key, "--witnesses", "1")
        ok(fork_verify, 1)


def test_a_serving_process_submits_new_checkpoints_by_itself(tmp_path: Path) -> None:
    db = tmp_path / "ledger.db"
    append(db, 10)
    key = ok(ledgerflow("pubkey", "--db", str(db))).strip()
    witness = Witness("witness.test/w2", {"ledgerflow/ledger": key})
    with serving(witness) as url:
        ok(ledgerflow("witness", "add", "--url", url, "--key", witness.vkey, "--db", str(db)))
        env = {"LEDGERFLOW_TIMER_INTERVAL_SECONDS": "0.2"}
        with serving_http("--db", str(db), log=tmp_path / "serve.log", env=env) as server:
            deadline = time.monotonic() + 30
            while 200 not in witness.requests:
                assert server.alive, "the server exited"
                assert time.monotonic() < deadline, f"no cosignature asked: {witness.requests}"
                time.sleep(0.1)
    listed = ok(ledgerflow("witness", "list", "--db", str(db)))
    assert "witness.test/w2" in listed and "  ok" in listed
    assert witness.seen["ledgerflow/ledger"][0] >= 10
