"""A downstream MCP server for the tests, written with the official SDK.

    python -m tests.downstream.files_server [stdio | http PORT]

Tools: `transfer` (its schema forbids unknown arguments), `read_note` / `write_note` over
a directory (NOTES_DIR), `add`, `fail` (isError), `slow` (sleeps), `request_payment` (answers
PENDING), `whoami` (checks the token it was given without revealing it) and `charge`
(remembers each idempotency key it saw in _meta), `count_to` (reports progress) and `grow`
(adds a tool and tells the client its list changed). It prints
its token to stderr on start, so the tests can check that ledgerflow's log scrubs it.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from mcp.server import MCPServer
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.mcpserver.tools import Tool


def transfer(amount: int, currency: str) -> dict[str, Any]:
    """Move money; its schema forbids arguments it does not name."""
    return {"moved": amount, "currency": currency}


STRICT = Tool.from_function(transfer)
STRICT.parameters["additionalProperties"] = False
server: MCPServer[Any] = MCPServer("files", tools=[STRICT])
NOTES = Path(os.environ.get("NOTES_DIR", "."))
SEEN = NOTES / "charges.jsonl"


@server.tool()
def read_note(name: str) -> dict[str, Any]:
    """Read a note."""
    return {"name": name, "text": (NOTES / f"{name}.txt").read_text()}


@server.tool()
def write_note(name: str, text: str) -> str:
    """Write a note."""
    (NOTES / f"{name}.txt").write_text(text)
    return f"wrote {len(text)} characters to {name}"


@server.tool()
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@server.tool()
def fail(reason: str) -> str:
    """Always fails."""
    raise ToolError(f"refused: {reason}")


@server.tool()
async def slow(seconds: float) -> str:
    """Sleep, then answer; a call cancelled midway leaves a `cancelled` file."""
    (NOTES / "slow.pid").write_text(str(os.getpid()))
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        (NOTES / "cancelled").write_text("cancelled")
        raise
    return "done"


@server.tool(structured_output=False)
def request_payment(order_id: str) -> str:
    """A provider that answers later, by webhook: the text PENDING makes the run wait."""
    return "PENDING"


@server.tool()
def whoami(ctx: Context) -> str:
    """Whether the caller holds a token (API_TOKEN in the environment over stdio, a bearer
    header over HTTP), without revealing it."""
    token = os.environ.get("API_TOKEN", "")
    request = ctx.request_context.request
    headers = getattr(request, "headers", None)
    if headers is not None:
        token = headers.get("authorization", "").removeprefix("Bearer ")
    return "authorized" if token.startswith("tok-") else "anonymous"


@server.tool()
def charge(amount: int, ctx: Context) -> dict[str, Any]:
    """Record a charge with the idempotency key the caller sent."""
    meta = dict(ctx.request_context.meta or {})
    key = meta.get("io.ledgerflow/idempotency-key")
    with SEEN.open("a") as file:
        file.write(json.dumps({"amount": amount, "key": key, "pid": os.getpid()}) + "\n")
    return {"charged": amount, "key": key}


@server.tool()
async def count_to(n: int, ctx: Context) -> str:
    """Count to n, reporting each number as progress."""
    for i in range(1, n + 1):
        await ctx.report_progress(i, n, f"counted {i}")
    return f"counted to {n}"


@server.tool()
async def grow(name: str, ctx: Context) -> str:
    """Add a tool `name` (it says back its text), then tell the client the tool list changed."""

    def echo(text: str) -> str:
        return text

    server.add_tool(echo, name=name, description="Say it back.")
    await ctx.notify_tools_changed()  # clients of the 2026-07-28 protocol listen for it
    await ctx.request_context.session.send_tool_list_changed()  # earlier versions
    return f"added {name}"


def main() -> None:
    print(f"files server starting, token={os.environ.get('API_TOKEN', '')}", file=sys.stderr)
    sys.stderr.flush()
    if len(sys.argv) > 2 and sys.argv[1] == "http":
        server.run("streamable-http", port=int(sys.argv[2]))
    else:
        server.run("stdio")


if __name__ == "__main__":
    main()
