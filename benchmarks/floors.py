"""The machine's limits for two workloads, measured in the same run as ledgerflow (rows marked
"floor" in RESULTS.md): how fast this machine can go with nothing of ledgerflow's.

- durable: a bare sqlite3 loop, WAL, synchronous=FULL, that commits (fsync) once when a
  workflow starts and once per step (3 steps): the least a durable 3-step workflow must write.
- MCP: a no-op tool on `mcp.server.MCPServer` (this file, run as `floors.py serve stdio|http
  PORT`), called by the same mcp 2.x client as ledgerflow's server: the protocol's own cost.
  The HTTP floor has no bearer check (ledgerflow's has).

Run by benchmarks/ledgerflow_runner.py for systems with {"floor": true}.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "anchors"))

import bench_common as common  # noqa: E402

FLOOR_STEPS = common.DURABLE_STEPS
ROW = os.urandom(300)  # about the size of a step envelope


def durable(spec: dict[str, Any]) -> dict[str, Any]:
    runs = int(spec["runs"])
    with tempfile.TemporaryDirectory(dir=spec.get("dir")) as tmp:
        db = sqlite3.connect(Path(tmp) / "floor.db", isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("CREATE TABLE records (id INTEGER PRIMARY KEY, run INTEGER, body BLOB)")

        def commit(run: int) -> None:
            db.execute("BEGIN IMMEDIATE")
            db.execute("INSERT INTO records (run, body) VALUES (?, ?)", (run, ROW))
            db.execute("COMMIT")

        with common.Stopwatch() as watch:
            for run in range(runs):
                for _ in range(1 + FLOOR_STEPS):  # the start, then each step
                    commit(run)
        (mode,) = db.execute("PRAGMA journal_mode").fetchone()
        db.close()
    return {
        "runs": runs,
        "seconds": watch.seconds,
        "steps_per_run": FLOOR_STEPS,
        "settings": {
            "floor": f"sqlite3 {sqlite3.sqlite_version}, journal_mode={mode}, FULL, "
            f"{1 + FLOOR_STEPS} commits per workflow"
        },
    }


def mcp_round_trip(spec: dict[str, Any]) -> dict[str, Any]:
    calls, warmup, transport = int(spec["calls"]), int(spec["warmup"]), spec["transport"]
    if transport == "stdio":
        result = asyncio.run(_mcp(None, calls, warmup))
    else:
        port = common.free_port()
        process = subprocess.Popen(
            [sys.executable, __file__, "serve", "http", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            common.wait_http_ok(f"http://127.0.0.1:{port}/readyz", process, "the floor server")
            result = asyncio.run(_mcp(f"http://127.0.0.1:{port}/mcp", calls, warmup))
        finally:
            common.stop(process)
    result["settings"] = {"floor": f"a no-op tool on mcp.server.MCPServer over {transport}"}
    return result


async def _mcp(url: str | None, calls: int, warmup: int) -> dict[str, Any]:
    """Drive the floor server over stdio (url None: started here) or Streamable HTTP."""
    from mcp import Client, StdioServerParameters
    from mcp.client.streamable_http import streamable_http_client

    async def call() -> float:
        with common.Stopwatch() as watch:
            result = await client.call_tool("noop", {})
        if result.is_error:
            raise RuntimeError(f"the no-op tool failed: {result.content}")
        return watch.seconds

    if url is None:
        params = StdioServerParameters(command=sys.executable, args=[__file__, "serve", "stdio"])
        async with Client(params) as client:
            return await common.timed_calls(call, calls, warmup)
    async with Client(streamable_http_client(url)) as client:
        return await common.timed_calls(call, calls, warmup)


def serve(transport: str, port: int) -> None:
    from mcp.server.mcpserver import MCPServer
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse

    server: MCPServer[Any] = MCPServer("floor")

    @server.tool()
    def noop() -> str:
        return "ok"

    @server.custom_route("/readyz", methods=["GET"])
    async def ready(_: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    if transport == "stdio":
        server.run("stdio")
    else:
        server.run("streamable-http", host="127.0.0.1", port=port)


if __name__ == "__main__" and sys.argv[1:2] == ["serve"]:
    serve(sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 0)
