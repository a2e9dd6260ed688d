"""A third-party MCP server ledgerflow did not write: `@modelcontextprotocol/server-everything`
from the npm registry, pinned in tests/downstream/npm/package-lock.json and installed by
`.ci/run` into a cache folder (LEDGERFLOW_TEST_NPM_DIR, default ~/.cache/ledgerflow/npm),
started by the tests with the machine's node over stdio."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
from mcp import Client, StdioServerParameters

from tests.downstream.servers import REPO, processes_with, wait_gone
from tests.downstream.test_cli import write_program
from tests.processes import ledgerflow

NPM_DIR = Path(
    os.environ.get("LEDGERFLOW_TEST_NPM_DIR", Path.home() / ".cache" / "ledgerflow" / "npm")
)
ENTRY = (
    NPM_DIR / "node_modules" / "@modelcontextprotocol" / "server-everything" / "dist" / "index.js"
)
NODE = shutil.which("node")
INSTALL = (
    f"mkdir -p {NPM_DIR} && cp tests/downstream/npm/package*.json {NPM_DIR} && "
    f"npm ci --prefix {NPM_DIR} --ignore-scripts"
)

pytestmark = [
    pytest.mark.skipif(NODE is None, reason="node is not installed: the npm server cannot run"),
    pytest.mark.skipif(
        not ENTRY.exists(), reason=f"server-everything is not installed; .ci/run does: {INSTALL}"
    ),
]


def server_flag() -> str:
    return f"everything={NODE} {ENTRY} stdio"


def test_a_program_calls_a_third_party_servers_tools(tmp_path: Path) -> None:
    program = write_program(
        tmp_path / "everything.json",
        [
            {"id": "echo", "type": "tool", "tool": "everything.echo", "args": {"message": "$who"}},
            {"id": "sum", "type": "tool", "tool": "everything.get-sum", "args": {"a": 2, "b": 3}},
            {
                "id": "weather",
                "type": "tool",
                "tool": "everything.get-structured-content",
                "args": {"location": "New York"},
            },
            {
                "id": "long",
                "type": "tool",
                "tool": "everything.trigger-long-running-operation",
                "args": {"duration": 1, "steps": 2},
                "is_terminal": True,
            },
        ],
    )
    db = str(tmp_path / "ledger.db")
    context = json.dumps({"who": "auditor"})
    ran = ledgerflow(
        "run", program, "--context", context, "--server", server_flag(), "--db", db, "--json"
    )
    assert ran.returncode == 0, ran.stdout[-2000:] + ran.stderr[-2000:]
    trace = json.loads(ran.stdout)
    assert trace["status"] == "SUCCESS"
    outputs = {step["step_id"]: step["output"] for step in trace["steps"]}
    assert outputs["echo"] == "Echo: auditor"
    assert outputs["sum"] == "The sum of 2 and 3 is 5."
    assert set(outputs["weather"]) == {"temperature", "conditions", "humidity"}
    assert "Long running operation completed" in outputs["long"]
    verified = ledgerflow("verify", "--db", db)
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_validate_checks_args_against_the_third_party_schema(tmp_path: Path) -> None:
    program = write_program(
        tmp_path / "wrong.json",
        [{"id": "sum", "type": "tool", "tool": "everything.get-sum", "args": {"a": "two"}}],
    )
    checked = ledgerflow("validate", program, "--server", server_flag())
    assert checked.returncode == 1
    assert "error: step 'sum', field 'args': missing required argument 'b'" in checked.stdout
    assert "error: step 'sum', field 'args.a': expected number, got string" in checked.stdout


async def test_its_tools_pass_through_a_stdio_gateway_with_their_progress(tmp_path: Path) -> None:
    config = tmp_path / "ledgerflow.toml"
    entry = {"command": NODE, "args": [str(ENTRY), "stdio"], "expose": True}
    config.write_text(
        "[servers.everything]\n" + "\n".join(f"{k} = {json.dumps(v)}" for k, v in entry.items())
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGERFLOW_")}
    params = StdioServerParameters(
        command=sys.executable,
        args=[
            "-m",
            "gateway.cli",
            "serve",
            "--config",
            str(config),
            "--db",
            str(tmp_path / "l.db"),
        ],
        cwd=str(REPO),
        env=env,
    )
    progress: list[tuple[float, float | None]] = []

    async def heard(done: float, total: float | None, message: str | None) -> None:
        progress.append((done, total))

    async with Client(params) as client:
        names = {tool.name for tool in (await client.list_tools()).tools}
        assert processes_with(str(ENTRY))  # the gateway started it
        summed = await client.call_tool("everything__get-sum", {"a": 1, "b": 41})
        long = await client.call_tool(
            "everything__trigger-long-running-operation",
            {"duration": 1, "steps": 2},
            progress_callback=heard,
        )
        envelopes = await client.call_tool("query_envelopes", {"kind": "tool_call"})
    # The client closed the gateway's stdin: the gateway shut down, and closed its server.
    assert wait_gone(str(ENTRY)) == []
    assert {"everything__echo", "everything__get-sum", "run_program"} <= names
    assert not summed.is_error
    assert _text(summed) == "The sum of 1 and 41 is 42."
    assert not long.is_error and progress == [(1, 2), (2, 2)]
    assert envelopes.structured_content is not None
    recorded = [e["payload"] for e in envelopes.structured_content["envelopes"]]
    assert [(p["tool"], p["outcome"]) for p in recorded] == [
        ("everything.get-sum", "ok"),
        ("everything.trigger-long-running-operation", "ok"),
    ]
    assert recorded[0]["principal"].startswith("local:")
    assert recorded[0]["arguments"] == {"a": 1, "b": 41}


def _text(result: Any) -> str:
    return " ".join(getattr(block, "text", "") for block in result.content)


def test_the_pinned_version_is_the_one_installed() -> None:
    lock = json.loads((REPO / "tests" / "downstream" / "npm" / "package-lock.json").read_text())
    pinned = lock["packages"]["node_modules/@modelcontextprotocol/server-everything"]["version"]
    installed = json.loads((ENTRY.parents[1] / "package.json").read_text())["version"]
    assert installed == pinned, f"reinstall: {INSTALL}"
