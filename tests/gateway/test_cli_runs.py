"""Recorded runs from the command line: each command a new process over the same ledger."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from kernel import Trace, TraceStatus

REPO = Path(__file__).resolve().parents[2]
PAYMENT_FLOW = "examples/payment_flow.yaml"
TOOLS = "examples.payments:TOOLS"
ORDER = '{"order_id": "A-1001", "amount": 250}'
PAID = '{"status": "succeeded"}'

TOOL_MODULE = """
import os
import time

def first():
    return {"step": 1}

def slow():
    if os.environ.get("LF_TEST_SLOW"):
        time.sleep(60)  # killed here by the test
    return {"step": 2}

TOOLS = {"first": first, "slow": slow}
"""
MY_TOOLS = "lf_runs_test_tools:TOOLS"


def ledgerflow(
    *args: str, cwd_tools: Path | None = None, extra_env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        cwd=REPO,
        env=environment(cwd_tools, extra_env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def environment(tools: Path | None, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("LEDGERFLOW_DB", "LEDGERFLOW_KEK")}
    if tools is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tools), env.get("PYTHONPATH")]))
    return {**env, **(extra or {})}


def ok(result: subprocess.CompletedProcess[str], code: int = 0) -> str:
    assert result.returncode == code, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    return result.stdout


def run_json(*args: str, tools: Path | None = None) -> Trace:
    return Trace.model_validate_json(ok(ledgerflow("run", *args, "--json", cwd_tools=tools)))


def write(path: Path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_run_suspends_and_a_new_process_resumes_then_replays(tmp_path: Path) -> None:
    db = str(tmp_path / "ledger.db")
    trace = run_json(PAYMENT_FLOW, "--tools", TOOLS, "--context", ORDER, "--db", db)
    assert trace.status is TraceStatus.SUSPENDED
    tid = trace.trace_id

    text = ok(ledgerflow("trace", tid, "--db", db))
    assert "SUSPENDED" in text and f"ledgerflow resume {tid} --db" in text
    assert "vm.resume(" not in text  # the in-memory hint does not apply to a recorded run

    # Without the tools the resume is refused before the run is claimed...
    missing = ledgerflow("resume", tid, "--db", db, "--event", PAID)
    assert missing.returncode == 2 and "hint: register" in missing.stderr
    # ...so it still resumes, in a new process, once they are given.
    done = ok(ledgerflow("resume", tid, "--db", db, "--event", PAID, "--tools", TOOLS, "--json"))
    resumed = Trace.model_validate_json(done)
    assert resumed.status is TraceStatus.SUCCESS
    assert [s.step_id for s in resumed.steps][-2:] == ["capture", "receipt"]

    again = ledgerflow("resume", tid, "--db", db, "--event", PAID, "--tools", TOOLS)
    assert again.returncode == 1
    assert again.stderr.startswith("error: ") and "not suspended" in again.stderr

    stored = Trace.model_validate_json(ok(ledgerflow("trace", tid, "--db", db, "--json")))
    assert stored.status is TraceStatus.SUCCESS
    assert stored.state_hashes == resumed.state_hashes
    assert "receipt" in ok(ledgerflow("trace", tid, "--db", db))

    replayed = ok(ledgerflow("replay", tid, "--db", db))
    assert replayed.startswith("OK: ") and "6 steps checked" in replayed
    changed = (REPO / PAYMENT_FLOW).read_text().replace("$amount <= 1000", "$amount <= 100")
    program = write(tmp_path / "payment_flow_v2.yaml", changed)
    diverged = ledgerflow("replay", tid, "--db", db, "--program", program)
    assert ok(diverged, 1).startswith("DIVERGED")
    assert "step 'amount_guard' (record 1)" in diverged.stdout


def test_cancel_a_suspended_run(tmp_path: Path) -> None:
    db = str(tmp_path / "ledger.db")
    tid = run_json(PAYMENT_FLOW, "--tools", TOOLS, "--context", ORDER, "--db", db).trace_id
    out = ok(ledgerflow("cancel", tid, "--db", db, "--reason", "customer left"))
    assert out.strip() == f"{tid}  CANCELLED  cancelled: customer left"
    again = ledgerflow("cancel", tid, "--db", db)
    assert again.returncode == 1 and "cannot cancel" in again.stderr
    assert "CANCELLED" in ok(ledgerflow("trace", tid, "--db", db))


def test_recover_a_run_whose_process_was_killed(tmp_path: Path) -> None:
    write(tmp_path / "lf_runs_test_tools.py", TOOL_MODULE)
    db = str(tmp_path / "ledger.db")
    program = write(
        tmp_path / "two.yaml",
        "name: two\nsteps:\n  - {id: first, type: tool, tool: first}\n"
        "  - {id: slow, type: tool, tool: slow}\n",
    )
    command = [sys.executable, "-m", "gateway.cli", "run", program, "--tools", MY_TOOLS]
    process = subprocess.Popen(
        [*command, "--db", db],
        cwd=REPO,
        env=environment(tmp_path, {"LF_TEST_SLOW": "1"}),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        first = wait_for_step(db, "first")
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
    tid = first["execution_id"]

    out = ok(ledgerflow("recover", "--db", db, "--tools", MY_TOOLS, cwd_tools=tmp_path))
    assert out.strip() == f"{tid}  SUCCESS"
    trace = Trace.model_validate_json(ok(ledgerflow("trace", tid, "--db", db, "--json")))
    assert [s.step_id for s in trace.steps] == ["first", "slow"]
    assert trace.final_output == {"step": 2}
    nothing = ledgerflow("recover", "--db", db, "--tools", MY_TOOLS, cwd_tools=tmp_path)
    assert ok(nothing).strip() == "no run to recover"


def wait_for_step(db: str, step_id: str) -> dict[str, object]:
    """Poll `envelopes` until the step's envelope is committed (the slow step then runs)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        result = ledgerflow("envelopes", "--db", db, "--kind", "step", "--jsonl")
        for line in result.stdout.splitlines() if result.returncode == 0 else []:
            envelope: dict[str, object] = json.loads(line)
            if envelope["step_id"] == step_id:
                return envelope
        time.sleep(0.1)
    raise AssertionError(f"step {step_id} was never journaled")


def test_timers_fire_a_due_wait_step(tmp_path: Path) -> None:
    write(tmp_path / "lf_runs_test_tools.py", TOOL_MODULE)
    db = str(tmp_path / "ledger.db")
    program = write(
        tmp_path / "nap.json",
        json.dumps(
            {
                "name": "nap",
                "steps": [
                    {"id": "nap", "type": "wait", "until": "2001-01-01T00:00:00Z"},
                    {"id": "after", "type": "tool", "tool": "first"},
                ],
            }
        ),
    )
    suspended = ledgerflow("run", program, "--tools", MY_TOOLS, "--db", db, cwd_tools=tmp_path)
    assert "timer         due 2001-01-01T00:00:00+00:00" in ok(suspended)
    tid = suspended.stdout.split("trace", 1)[1].split()[0]

    fired = ledgerflow("timers", "--db", db, "--tools", MY_TOOLS, cwd_tools=tmp_path)
    assert ok(fired).strip() == f"{tid}  SUCCESS"
    again = ledgerflow("timers", "--db", db, "--tools", MY_TOOLS, cwd_tools=tmp_path)
    assert ok(again).strip() == "no timer due"


def test_errors_are_one_line_with_the_right_exit_code(tmp_path: Path) -> None:
    db = str(tmp_path / "ledger.db")
    missing = ledgerflow("trace", "nope", "--db", db)
    assert missing.returncode == 2 and missing.stderr.startswith(f"error: no ledger at {db}")
    run_json(PAYMENT_FLOW, "--tools", TOOLS, "--context", ORDER, "--db", db)
    unknown = ledgerflow("resume", "nope", "--db", db, "--event", "{}", "--tools", TOOLS)
    assert unknown.returncode == 1 and "no run 'nope'" in unknown.stderr
    assert ledgerflow("trace", "nope", "--db", db).returncode == 1
    bad_event = ledgerflow("resume", "nope", "--db", db, "--event", "{oops")
    assert bad_event.returncode == 2 and "--event is not valid JSON" in bad_event.stderr
    secret = '{"order_id": {"$secret": "x"}, "amount": 1}'
    sealed = ledgerflow("run", PAYMENT_FLOW, "--tools", TOOLS, "--db", db, "--context", secret)
    assert sealed.returncode == 2 and '"subject" (data subject id) is missing' in sealed.stderr
    for result in (missing, unknown, bad_event, sealed):
        assert "Traceback" not in result.stderr


def test_prune_keeps_the_ledger_verifiable(tmp_path: Path) -> None:
    db = str(tmp_path / "l.db")
    program = tmp_path / "p.json"
    program.write_text('{"name": "p", "steps": [{"id": "a", "type": "tool", "tool": "t"}]}')
    (tmp_path / "prunetools.py").write_text("def t():\n    return 1\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    cli = [sys.executable, "-m", "gateway.cli"]
    run = subprocess.run(
        [*cli, "run", str(program), "--db", db, "--tools", "prunetools:t"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    bad = subprocess.run(
        [*cli, "prune", "--db", db, "--older-than", "soon"], capture_output=True, text=True, env=env
    )
    assert bad.returncode == 2 and "not an age" in bad.stderr
    pruned = subprocess.run(
        [*cli, "prune", "--db", db, "--older-than", "0s"], capture_output=True, text=True, env=env
    )
    assert pruned.returncode == 0, pruned.stderr
    assert "1 finished run" in pruned.stdout
    verified = subprocess.run([*cli, "verify", "--db", db], capture_output=True, text=True, env=env)
    assert verified.returncode == 0, verified.stdout + verified.stderr
