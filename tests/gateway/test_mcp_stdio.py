"""`ledgerflow serve --transport stdio` as a real subprocess, driven by the SDK's stdio client."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from mcp import Client, StdioServerParameters
from mcp.types import jsonrpc_message_adapter

from gateway.application.principal import TOOL_SCOPES
from kernel import Program

REPO = Path(__file__).resolve().parents[2]
PAYMENT = Program.from_file(REPO / "examples" / "payment_flow.yaml").to_dict()
NOISY_TOOLS = """
print("noise at import")

def shout():
    print("noise from a tool")
    return {"shouted": True}

TOOLS = {"shout": shout}
"""


def serve_command(*args: str) -> list[str]:
    return ["-m", "gateway.cli", "serve", "--transport", "stdio", *args]


def environment(extra_path: Path | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("LEDGERFLOW_DB", "LEDGERFLOW_KEK")}
    if extra_path is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(extra_path), env.get("PYTHONPATH")]))
    return env


async def test_stdio_server_runs_resumes_and_verifies(tmp_path: Path) -> None:
    faults: list[Exception] = []

    async def on_message(message: Any) -> None:
        if isinstance(message, Exception):  # a stdout line that is not a protocol message
            faults.append(message)

    command = serve_command(
        "--db", str(tmp_path / "ledger.db"), "--tools", "examples.payments:TOOLS"
    )
    params = StdioServerParameters(
        command=sys.executable, args=command, cwd=REPO, env=environment()
    )
    async with Client(params, message_handler=on_message) as client:
        tools = (await client.list_tools()).tools
        assert {tool.name for tool in tools} == set(TOOL_SCOPES)
        context = {"order_id": "A-1001", "amount": 250}
        run = await client.call_tool("run_program", {"program": PAYMENT, "context": context})
        assert run.structured_content is not None and not run.is_error
        assert run.structured_content["status"] == "SUSPENDED"
        trace_id = run.structured_content["trace_id"]
        done = await client.call_tool(
            "resume_run", {"trace_id": trace_id, "event": {"status": "succeeded"}}
        )
        assert done.structured_content is not None
        assert done.structured_content["status"] == "SUCCESS"
        report = await client.call_tool("verify_ledger", {})
        assert report.structured_content is not None and report.structured_content["ok"]
    assert faults == []


async def test_stdout_carries_only_protocol_even_when_tools_print(tmp_path: Path) -> None:
    (tmp_path / "lf_noisy_tools.py").write_text(NOISY_TOOLS)
    command = serve_command("--db", str(tmp_path / "ledger.db"), "--tools", "lf_noisy_tools:TOOLS")
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *command,
        cwd=tmp_path,
        env=environment(tmp_path),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdin is not None and process.stdout is not None
    lines: list[str] = []

    async def send(message: dict[str, Any]) -> None:
        assert process.stdin is not None
        process.stdin.write((json.dumps({"jsonrpc": "2.0", **message}) + "\n").encode())
        await process.stdin.drain()

    async def response(request_id: int) -> dict[str, Any]:
        while True:
            assert process.stdout is not None
            line = (await asyncio.wait_for(process.stdout.readline(), 30)).decode()
            lines.append(line)
            message = json.loads(line)
            if message.get("id") == request_id:
                return dict(message)

    hello = {"protocolVersion": "2025-11-25", "capabilities": {}}
    hello["clientInfo"] = {"name": "test", "version": "0"}
    await send({"id": 1, "method": "initialize", "params": hello})
    await response(1)
    await send({"method": "notifications/initialized"})
    noisy = {"name": "noisy", "steps": [{"id": "s", "type": "tool", "tool": "shout"}]}
    call = {"name": "run_program", "arguments": {"program": noisy}}
    await send({"id": 2, "method": "tools/call", "params": call})
    result = (await response(2))["result"]
    assert result["structuredContent"]["status"] == "SUCCESS"
    process.stdin.close()
    rest, errors = await asyncio.wait_for(process.communicate(), 30)
    lines += rest.decode().splitlines()
    for line in filter(str.strip, lines):
        jsonrpc_message_adapter.validate_json(line)  # raises on anything but a protocol message
    assert process.returncode == 0
    assert b"noise at import" in errors and b"noise from a tool" in errors


SLOW_TOOLS = """
def first():
    return {"step": 1}

def slow():
    return {"step": 2}

TOOLS = {"first": first, "slow": slow}
"""


async def test_serve_recovers_dead_runs_and_fires_timers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LEDGERFLOW_KEK", raising=False)  # the server gets none either
    db = tmp_path / "ledger.db"
    await _leave_a_run_running(db)
    (tmp_path / "lf_slow_tools.py").write_text(SLOW_TOOLS)
    params = StdioServerParameters(
        command=sys.executable,
        args=serve_command("--db", str(db), "--tools", "lf_slow_tools:TOOLS"),
        cwd=tmp_path,
        env=environment(tmp_path),
    )
    async with Client(params) as client:
        runs = (await client.call_tool("list_traces", {})).structured_content
        assert runs is not None and [r["status"] for r in runs["traces"]] == ["SUCCESS"]
        waiting = {"name": "nap", "steps": [{"id": "nap", "type": "wait", "seconds": 0.2}]}
        run = await client.call_tool("run_program", {"program": waiting})
        assert run.structured_content is not None
        assert run.structured_content["status"] == "SUSPENDED"
        trace_id = run.structured_content["trace_id"]
        for _ in range(50):  # the timer loop runs every second
            trace = await client.call_tool("get_trace", {"trace_id": trace_id})
            assert trace.structured_content is not None
            if trace.structured_content["status"] == "SUCCESS":
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the wait step's timer never fired")


async def _leave_a_run_running(db: Path) -> None:
    """A run whose process 'died' in its second step: the journal says RUNNING."""
    from gateway.application.workspace import Workspace
    from kernel import ExecutionVM

    reached = asyncio.Event()

    async def slow() -> None:
        reached.set()  # step 'a' is recorded by now
        await asyncio.Event().wait()

    program = Program.from_dict(
        {
            "name": "two",
            "steps": [
                {"id": "a", "type": "tool", "tool": "first"},
                {"id": "b", "type": "tool", "tool": "slow"},
            ],
        }
    )
    async with await Workspace.open(db) as workspace:
        vm: ExecutionVM = workspace.vm({"first": lambda: {"step": 1}, "slow": slow})
        task = asyncio.create_task(vm.run(program))
        await reached.wait()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
