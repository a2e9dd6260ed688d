"""The command line is held to the ledger's policy and recorded like any other entry point: a
program the policy refuses over MCP is refused by `ledgerflow run` with the same message and
the same `denied` envelope, and runs started before a policy changed are held to the new one
when they resume or their timer fires."""

from __future__ import annotations

import asyncio
import getpass
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from mcp import Client, StdioServerParameters

from gateway.application.workspace import Workspace
from governance import PolicySnapshot
from kernel import Program

REPO = Path(__file__).resolve().parents[2]
PAYMENT_FLOW = "examples/payment_flow.yaml"
TOOLS = "examples.payments:TOOLS"
ORDER = {"order_id": "A-1001", "amount": 250}
FROZEN = PolicySnapshot(name="payments-frozen", tools_deny=("initiate_payment",))


def environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("LEDGERFLOW_DB", "LEDGERFLOW_KEK")}


def ledgerflow(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        cwd=REPO,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def set_policy(db: Path, policy: PolicySnapshot) -> None:
    async def apply() -> None:
        async with await Workspace.open(db) as workspace:
            await workspace.ledger.set_policy(policy)

    asyncio.run(apply())


def envelopes(db: Path, kind: str) -> list[dict[str, Any]]:
    listed = ledgerflow("envelopes", "--kind", kind, "--jsonl", "--db", str(db))
    assert listed.returncode == 0, listed.stderr
    return [json.loads(line) for line in listed.stdout.splitlines()]


async def refused_over_mcp(db: Path) -> str:
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "gateway.cli", "serve", "--db", str(db), "--tools", TOOLS],
        cwd=REPO,
        env=environment(),
    )
    program = Program.from_file(REPO / PAYMENT_FLOW).to_dict()
    async with Client(params) as client:
        result = await client.call_tool("run_program", {"program": program, "context": ORDER})
    assert result.is_error
    text = " ".join(getattr(block, "text", "") for block in result.content)
    return text.removeprefix("Error executing tool run_program: ")  # the SDK's framing


def test_a_program_refused_over_mcp_is_refused_alike_by_the_command_line(tmp_path: Path) -> None:
    db = tmp_path / "ledger.db"
    set_policy(db, FROZEN)
    message = asyncio.run(refused_over_mcp(db))
    assert message == (
        "refused by the policy 'payments-frozen': step 'initiate' calls tool "
        "'initiate_payment', which is not allowed"
    )

    run = ledgerflow(
        "run", PAYMENT_FLOW, "--tools", TOOLS, "--context", json.dumps(ORDER), "--db", str(db)
    )
    assert run.returncode == 1
    assert run.stderr == f"error: {message}\n"

    over_mcp, from_cli = envelopes(db, "denied")
    assert over_mcp["payload"] == from_cli["payload"]
    assert from_cli["payload"]["principal"] == f"local:{_user()}"
    assert from_cli["payload"]["tool"] == "run_program"
    accesses = [e["payload"] for e in envelopes(db, "access")]
    assert [(a["tool"], a["outcome"]) for a in accesses] == [("run_program", "denied")] * 2
    # Nothing ran: no run was started, so no secret or step reached the ledger.
    assert envelopes(db, "run_started") == []


def test_a_suspended_run_resumes_only_under_the_policy_in_force(tmp_path: Path) -> None:
    db = tmp_path / "ledger.db"
    flags = ["--tools", TOOLS, "--db", str(db)]
    started = ledgerflow("run", PAYMENT_FLOW, "--context", json.dumps(ORDER), *flags, "--json")
    assert started.returncode == 0, started.stderr
    trace_id = json.loads(started.stdout)["trace_id"]
    later = PolicySnapshot(name="no-capture", tools_deny=("capture_payment",))
    set_policy(db, later)

    paid = '{"status": "succeeded"}'
    refused = ledgerflow("resume", trace_id, "--event", paid, *flags)
    assert refused.returncode == 1
    assert refused.stderr.startswith("error: refused by the policy 'no-capture': ")
    [denied] = envelopes(db, "denied")
    assert (denied["execution_id"], denied["payload"]["tool"]) == (trace_id, "resume_run")
    shown = ledgerflow("trace", trace_id, "--db", str(db), "--json")
    assert json.loads(shown.stdout)["status"] == "SUSPENDED"  # not claimed by the refusal

    set_policy(db, PolicySnapshot())
    resumed = ledgerflow("resume", trace_id, "--event", paid, *flags, "--json")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["status"] == "SUCCESS"


def test_a_due_timer_is_not_fired_for_a_run_the_policy_now_refuses(tmp_path: Path) -> None:
    db = tmp_path / "ledger.db"
    nap = tmp_path / "nap.json"
    nap.write_text(
        json.dumps(
            {
                "name": "nap",
                "steps": [
                    {"id": "nap", "type": "wait", "until": "2001-01-01T00:00:00Z"},
                    {"id": "pay", "type": "tool", "tool": "initiate_payment"},
                ],
            }
        )
    )
    flags = ["--tools", TOOLS, "--db", str(db)]
    started = ledgerflow("run", str(nap), "--context", json.dumps(ORDER), *flags, "--json")
    assert json.loads(started.stdout)["status"] == "SUSPENDED", started.stderr
    set_policy(db, FROZEN)

    fired = ledgerflow("timers", *flags)
    assert fired.returncode == 1 and "refused by the policy 'payments-frozen'" in fired.stderr
    [denied] = envelopes(db, "denied")
    assert denied["payload"]["tool"] == "fire_timers"
    timers = [
        a for a in (e["payload"] for e in envelopes(db, "access")) if a["tool"] != "run_program"
    ]
    assert [(a["tool"], a["outcome"]) for a in timers] == [("fire_timers", "denied")]


def _user() -> str:
    return getpass.getuser()
