"""The command line with downstream MCP servers: validate against their schemas, run a program
that reads from one server and writes to another across a suspension, and audit the result."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from gateway.application.workspace import Workspace
from tests.downstream.servers import SERVER_MODULE, http_server, stdio_config
from tests.processes import ledgerflow

FILES_TOKEN = "tok-2b8e41d0-files-env-secret"
LEDGER_TOKEN = "tok-93ad55c7-ledger-header-secret"


def write_program(path: Path, steps: list[dict[str, Any]]) -> str:
    path.write_text(json.dumps({"name": path.stem, "steps": steps}))
    return str(path)


def test_validate_checks_literal_arguments_against_the_tools_schema(tmp_path: Path) -> None:
    program = write_program(
        tmp_path / "checked.json",
        [
            {
                "id": "wrong",
                "type": "tool",
                "tool": "files.transfer",
                "args": {"amount": "ten", "currency": "EUR", "memo": "x"},
            },
            {"id": "short", "type": "tool", "tool": "files.transfer", "args": {"currency": "EUR"}},
            {
                "id": "later",
                "type": "tool",
                "tool": "files.transfer",
                "args": {"amount": "$amount", "currency": "EUR"},
            },
            {"id": "typo", "type": "tool", "tool": "files.raed_note", "args": {"name": "a"}},
            {"id": "python", "type": "tool", "tool": "reserve_funds"},
        ],
    )
    server = f"files={sys.executable} -m {SERVER_MODULE}"
    result = ledgerflow("validate", program, "--server", server)
    assert result.returncode == 1, result.stderr
    errors = [line for line in result.stdout.splitlines() if line.startswith("error:")]
    assert errors == [
        "error: step 'wrong', field 'args': unknown argument 'memo' (the tool takes: amount, "
        "currency)",
        "error: step 'wrong', field 'args.amount': expected integer, got string",
        "error: step 'short', field 'args': missing required argument 'amount'",
        "error: step 'typo', field 'tool': tool 'files.raed_note' is not registered (did you "
        "mean 'files.read_note'?" + errors[3].partition("'files.read_note'?")[2],
    ]
    assert "checked: invalid, 4 errors" in result.stdout


def test_an_unknown_server_is_a_hint_naming_how_to_configure_it(tmp_path: Path) -> None:
    program = write_program(
        tmp_path / "p.json", [{"id": "a", "type": "tool", "tool": "crm.lookup", "args": {}}]
    )
    result = ledgerflow("run", program)
    assert result.returncode == 2
    assert "configure the MCP server crm" in result.stderr


def test_bad_server_configuration_is_one_line_naming_the_server_and_key(tmp_path: Path) -> None:
    step = {"id": "a", "type": "tool", "tool": "files.add", "args": {"a": 1, "b": 2}}
    program = write_program(tmp_path / "p.json", [step])
    config = tmp_path / "servers.json"
    config.write_text(json.dumps({"mcpServers": {"files": {"comand": "npx"}}}))
    result = ledgerflow("run", program, "--servers", str(config))
    assert result.returncode == 2
    assert f"{config}: server 'files' comand: unknown key; did you mean 'command'?" in result.stderr
    config.write_text(json.dumps({"mcpServers": {"files": {"command": "no-such-cmd-lf"}}}))
    result = ledgerflow("run", program, "--servers", str(config))
    assert result.returncode == 2
    assert "server 'files': cannot connect: command not found: no-such-cmd-lf" in result.stderr


def _vault_secret(db: Path, value: str) -> str:
    async def put() -> str:
        async with await Workspace.open(db) as workspace:
            assert workspace.vault is not None
            return workspace.vault.put(value, "ops-team").uri

    return asyncio.run(put())


def test_a_program_reads_from_one_server_and_writes_to_another_across_a_suspension(
    tmp_path: Path,
) -> None:
    files_dir, ledger_dir = tmp_path / "files", tmp_path / "ledger"
    files_dir.mkdir()
    ledger_dir.mkdir()
    (files_dir / "memo.txt").write_text("invoice 7")
    db = tmp_path / "ledger.db"
    ref = _vault_secret(db, LEDGER_TOKEN)
    program = write_program(
        tmp_path / "notes_to_ledger.json",
        [
            {"id": "read", "type": "tool", "tool": "files.read_note", "args": {"name": "$note"}},
            {"id": "caller", "type": "tool", "tool": "files.whoami"},
            {"id": "signed_in", "type": "tool", "tool": "ledger.whoami"},
            {
                "id": "pay",
                "type": "tool",
                "tool": "ledger.request_payment",
                "args": {"order_id": "$note"},
            },
            {
                "id": "record",
                "type": "tool",
                "tool": "ledger.write_note",
                "args": {"name": "receipt", "text": "${read.output.text}: ${pay.output.status}"},
                "is_terminal": True,
            },
        ],
    )
    with http_server(ledger_dir) as url:
        servers = tmp_path / "claude_desktop_config.json"
        files = stdio_config(files_dir, env={"API_TOKEN": "${FILES_TOKEN}"})
        ledger = {"url": url, "headers": {"Authorization": f"Bearer {ref}"}}
        servers.write_text(json.dumps({"mcpServers": {"files": files, "ledger": ledger}}))
        flags = ["--db", str(db), "--servers", str(servers), "--json"]
        env = {"FILES_TOKEN": FILES_TOKEN}
        started = ledgerflow("run", program, "--context", '{"note": "memo"}', *flags, env=env)
        assert started.returncode == 0, started.stdout[-3000:]
        trace = json.loads(started.stdout)
        assert trace["status"] == "SUSPENDED"
        outputs = {step["step_id"]: step.get("output") for step in trace["steps"]}
        assert outputs["caller"] == {"result": "authorized"}  # the env secret reached it
        assert outputs["signed_in"] == {"result": "authorized"}  # and the vault-held header

        event = json.dumps({"status": "paid"})
        resumed = ledgerflow("resume", trace["trace_id"], "--event", event, *flags, env=env)
        assert resumed.returncode == 0, resumed.stderr
        assert json.loads(resumed.stdout)["status"] == "SUCCESS"
    assert (ledger_dir / "receipt.txt").read_text() == "invoice 7: paid"

    verified = ledgerflow("verify", "--db", str(db))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    listed = ledgerflow("envelopes", "--kind", "step", "--jsonl", "--db", str(db))
    steps = [json.loads(line) for line in listed.stdout.splitlines()]
    record = next(e for e in steps if e["step_id"] == "record")
    assert record["payload"]["tool"] == "ledger.write_note"
    assert record["payload"]["arguments"] == {"name": "receipt", "text": "invoice 7: paid"}
    bundle = tmp_path / "proof.json"
    proof = ledgerflow("proof", "--seq", str(record["seq"]), "--out", str(bundle), "--db", str(db))
    assert proof.returncode == 0, proof.stderr
    key = ledgerflow("pubkey", "--db", str(db)).stdout.strip()
    checked = ledgerflow("verify-proof", str(bundle), "--key", key)
    assert checked.returncode == 0, checked.stdout + checked.stderr

    # Neither secret is in any file ledgerflow wrote, nor in anything it printed.
    printed = started.stdout + started.stderr + resumed.stdout + resumed.stderr
    for secret in (FILES_TOKEN, LEDGER_TOKEN):
        assert secret not in printed
        for path in tmp_path.rglob("*"):
            if path.is_file():
                assert secret.encode() not in path.read_bytes(), path


def test_servers_list_shows_each_servers_state_and_allowed_tools(tmp_path: Path) -> None:
    config = tmp_path / "servers.json"
    files = stdio_config(tmp_path, tools=["read_*", "add"], expose=True, rate_limit="5/min")
    gone = {"command": "no-such-cmd-lf"}
    config.write_text(json.dumps({"mcpServers": {"files": files, "gone": gone}}))
    text = ledgerflow("servers", "list", "--servers", str(config))
    assert text.returncode == 1  # one server cannot be reached
    assert text.stdout.splitlines() == [
        "files [stdio]: ready, 2 tools, exposed to MCP clients as files__TOOL, 5/min per token",
        "  files.read_note (name)  Read a note.",
        "  files.add (a, b)  Add two integers.",
        "gone [stdio]: " + text.stdout.splitlines()[3].partition(": ")[2],
    ]
    assert "command not found: no-such-cmd-lf" in text.stdout
    listed = json.loads(ledgerflow("servers", "list", "--servers", str(config), "--json").stdout)
    assert [t["name"] for t in listed["files"]["tools"]] == ["files.read_note", "files.add"]
    assert [t["exposed_as"] for t in listed["files"]["tools"]] == ["files__read_note", "files__add"]
    assert listed["gone"]["tools"] == [] and listed["gone"]["state"] != "ready"
