"""nano-vm-mcp anchor (run inside benchmarks/.venvs/nano_vm_mcp): workload 6, MCP round trip.

nano-vm-mcp 0.4.6, read from its installed source: `nano-vm-mcp --transport stdio|sse --db PATH
[--host H --port P] [--env-file F]` (python -m nano_vm_mcp.cli); SSE serves `/sse` with messages
to `/messages/` and `GET /health`; with `NANO_VM_MCP_API_KEY` set, `/sse` and `/messages` need
`Authorization: Bearer <key>` (without it they are open). `run_program` takes `program` (a
nano_vm Program dict) and `save_as` only (no context); it answers one TextContent holding JSON
{trace_id, program_id, status, steps, cost, error}. Every call persists, in its SQLite store
(journal_mode=WAL, synchronous=NORMAL, set by the store; one commit per write): the program, the
full trace, a state-context row, per-transition statistics and a governance envelope.

The client is the `mcp` SDK (<2) installed beside it: it does not import with mcp 2.x.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import sys
import tempfile
from contextlib import AsyncExitStack
from importlib import metadata
from pathlib import Path
from typing import Any

import bench_common as common
from mcp import ClientSession, StdioServerParameters
from mcp.client.sse import sse_client
from mcp.client.stdio import stdio_client

# Condition steps only, executed check -> yes -> done (3 steps). nano-vm needs every condition
# to name a target and halts on `is_terminal`; ledgerflow's equivalent (benchmarks/
# ledgerflow_runner.py) ends after its last step instead (it rejects is_terminal on conditions).
PROGRAM: dict[str, Any] = {
    "name": "mcp_branch",
    "steps": [
        {
            "id": "check",
            "type": "condition",
            "condition": "1 == 1",
            "then": "yes",
            "otherwise": "no",
        },
        {
            "id": "no",
            "type": "condition",
            "condition": "1 == 2",
            "then": "check",
            "is_terminal": True,
        },
        {"id": "yes", "type": "condition", "condition": "2 > 1", "then": "done", "otherwise": "no"},
        {
            "id": "done",
            "type": "condition",
            "condition": "3 >= 3",
            "then": "check",
            "is_terminal": True,
        },
    ],
    "max_steps": 10,
}
STEPS = 3


def versions() -> dict[str, str]:
    return {name: metadata.version(name) for name in ("nano-vm-mcp", "llm-nano-vm", "mcp")}


def server_env(directory: Path, api_key: str = "") -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NANO_VM_MCP_")}
    env["NANO_VM_MCP_DB"] = str(directory / "nano_vm_mcp.db")
    if api_key:
        env["NANO_VM_MCP_API_KEY"] = api_key
    return env


def server_args(directory: Path, *transport: str) -> list[str]:
    # --env-file pointing nowhere: the CLI loads ./.env otherwise.
    return [
        "-m",
        "nano_vm_mcp.cli",
        *transport,
        "--db",
        str(directory / "nano_vm_mcp.db"),
        "--env-file",
        str(directory / "absent.env"),
    ]


async def call(session: ClientSession) -> float:
    with common.Stopwatch() as watch:
        result = await session.call_tool("run_program", {"program": PROGRAM})
    if result.isError:
        raise RuntimeError(f"run_program failed: {result.content}")
    answer = json.loads(result.content[0].text)  # type: ignore[union-attr]
    if answer.get("error") or "SUCCESS" not in str(answer.get("status")).upper():
        raise RuntimeError(f"run_program answered {answer}")
    if answer.get("steps") != STEPS:
        raise RuntimeError(f"run_program executed {answer.get('steps')} steps, not {STEPS}")
    return watch.seconds


async def drive(session: ClientSession, calls: int, warmup: int) -> dict[str, Any]:
    await session.initialize()
    return await common.timed_calls(lambda: call(session), calls, warmup)


async def over_stdio(directory: Path, calls: int, warmup: int) -> dict[str, Any]:
    params = StdioServerParameters(
        command=sys.executable,
        args=server_args(directory, "--transport", "stdio"),
        env=server_env(directory),
        cwd=str(directory),
    )
    async with AsyncExitStack() as stack:
        read, write = await stack.enter_async_context(stdio_client(params))
        session = await stack.enter_async_context(ClientSession(read, write))
        return await drive(session, calls, warmup)


def start_sse_server(directory: Path) -> tuple[subprocess.Popen[bytes], str, str]:
    """`nano-vm-mcp --transport sse` on a free loopback port with an API key, healthy;
    (process, url, key)."""
    port, api_key = common.free_port(), secrets.token_urlsafe(32)
    args = server_args(directory, "--transport", "sse", "--host", "127.0.0.1", "--port", str(port))
    process = subprocess.Popen(
        [sys.executable, *args],
        env=server_env(directory, api_key),
        cwd=directory,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        common.wait_http_ok(f"http://127.0.0.1:{port}/health", process, "nano-vm-mcp")
    except BaseException:
        common.stop(process)
        raise
    return process, f"http://127.0.0.1:{port}/sse", api_key


async def over_sse(url: str, api_key: str, calls: int, warmup: int) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {api_key}"}
    async with AsyncExitStack() as stack:
        read, write = await stack.enter_async_context(sse_client(url, headers=headers))
        session = await stack.enter_async_context(ClientSession(read, write))
        return await drive(session, calls, warmup)


def mcp_round_trip(spec: dict[str, Any]) -> dict[str, Any]:
    calls, warmup, transport = int(spec["calls"]), int(spec["warmup"]), spec["transport"]
    with tempfile.TemporaryDirectory(dir=spec.get("dir")) as tmp:
        directory = Path(tmp)
        if transport == "stdio":
            result = asyncio.run(over_stdio(directory, calls, warmup))
            where = "stdio (the client starts the server: python -m nano_vm_mcp.cli)"
        else:
            process, url, api_key = start_sse_server(directory)
            try:
                result = asyncio.run(over_sse(url, api_key, calls, warmup))
            finally:
                common.stop(process)
            where = "SSE on a loopback port, NANO_VM_MCP_API_KEY bearer key"
        mode = common.file_journal_mode(str(directory / "nano_vm_mcp.db"))
    result["steps_per_run"] = STEPS
    result["settings"] = {
        "transport": where,
        "store": f"SQLite journal_mode={mode}, synchronous=NORMAL (fixed by its store); per "
        "call: program, trace, state context, transitions, governance envelope",
    }
    return result


if __name__ == "__main__":
    common.main({"mcp_round_trip": mcp_round_trip}, versions)
