"""What ledgerflow adds to a downstream MCP call: the same stdio server (the tests' SDK-written
files server) called three ways in one run, one call at a time.

- direct: the SDK client (`mcp.Client`) calling `add`: the anchor;
- program tool: ledgerflow's downstream tool (inputSchema check, `_meta` idempotency key,
  result mapping) over its supervised session;
- run (in memory): a one-step program calling it on the kernel VM, no ledger;
- run (recorded): the same program through the application service over a SQLite ledger at
  synchronous=FULL (run start, step and end envelopes, run index, access envelope);
- pass-through: `LedgerflowService.call_tool` of the exposed `files__add` (scope, policy and
  rate-limit checks, schema check, one tool_call envelope, FULL).

    python benchmarks/downstream_latency.py [--calls N]     (default 500)

Prints per-call p50 and mean in ms and each as a ratio to `direct`.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mcp import Client, StdioServerParameters  # noqa: E402

from gateway.application.principal import Principal  # noqa: E402
from gateway.application.service import LedgerflowService  # noqa: E402
from gateway.application.workspace import Workspace  # noqa: E402
from gateway.downstream.config import parse_server  # noqa: E402
from gateway.downstream.pool import DownstreamServers  # noqa: E402
from kernel import ExecutionVM, Program  # noqa: E402
from kernel.tools import ToolContext  # noqa: E402

MODULE = "tests.downstream.files_server"


async def timed(calls: int, once: Callable[[], Awaitable[Any]]) -> list[float]:
    for _ in range(20):  # warm-up
        await once()
    samples = []
    for _ in range(calls):
        started = time.perf_counter()
        await once()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


async def main(calls: int) -> None:
    notes = tempfile.mkdtemp()
    env = {"NOTES_DIR": notes}
    params = StdioServerParameters(
        command=sys.executable, args=["-m", MODULE], env=env, cwd=str(ROOT)
    )
    results: dict[str, list[float]] = {}
    async with Client(params) as client:
        results["direct"] = await timed(calls, lambda: client.call_tool("add", {"a": 1, "b": 2}))

    config = {
        "command": sys.executable,
        "args": ["-m", MODULE],
        "env": env,
        "cwd": str(ROOT),
        "expose": True,
    }
    pool = DownstreamServers({"files": parse_server("files", config, "benchmark")})
    db = Path(notes) / "ledger.db"
    workspace = await Workspace.open(db, kek_path=f"{db}.kek")
    service = await LedgerflowService.open(workspace)

    def register(tools: dict[str, Any]) -> None:
        for name, fn in tools.items():
            service.vm.register_tool(name, fn)

    pool.on_tools = register
    pool.on_exposed = service.exposed.replace
    operator = Principal.local_operator()
    try:
        await pool.connect()
        tool = pool.tools()["files.add"]
        ctx = ToolContext("t", "s", 1, "t:s:1")
        results["program tool"] = await timed(calls, lambda: tool(ctx, a=1, b=2))
        vm = ExecutionVM(tools=pool.tools())
        program = Program.from_dict(
            {
                "name": "one",
                "steps": [
                    {"id": "add", "type": "tool", "tool": "files.add", "args": {"a": 1, "b": 2}}
                ],
            }
        )
        results["run (in memory)"] = await timed(calls, lambda: vm.run(program))
        results["run (recorded)"] = await timed(
            calls, lambda: service.run_program(operator, program)
        )
        results["pass-through"] = await timed(
            calls, lambda: service.call_tool(operator, "files__add", {"a": 1, "b": 2})
        )
    finally:
        await pool.close()
        await service.close()
        await workspace.close()

    anchor = statistics.median(results["direct"])
    print(f"{calls} calls each, one at a time (stdio, the tests' files server)")
    print(f"{'path':<18} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8} {'p50 vs direct':>14}")
    for name, samples in results.items():
        p50, p99 = statistics.median(samples), statistics.quantiles(samples, n=100)[98]
        mean = statistics.mean(samples)
        print(f"{name:<18} {p50:8.3f} {p99:8.3f} {mean:8.3f} {p50 / anchor:13.2f}x")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=500)
    asyncio.run(main(parser.parse_args().calls))
