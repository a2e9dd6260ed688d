"""`ledgerflow serve --transport http` in front of two downstream servers, as real processes:
MCP clients with bearer tokens call the exposed tools (pass-through) and run programs that use
both servers, a signed webhook resumes a suspended run, and the ledger records every call."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.types import CallToolResult

from gateway.http.webhook_signatures import sign
from tests.downstream.servers import SERVER_MODULE, http_server
from tests.processes import REPO, ledgerflow, serving_http

SECRET = "whsec_downstream_test"
RATE = 7  # calls per minute per token on the files server


@dataclass
class Gateway:
    url: str
    db: Path
    tokens: dict[str, str]
    ledger_notes: Path  # the HTTP server's notes directory

    @contextlib.asynccontextmanager
    async def client(self, token: str, **options: Any) -> AsyncIterator[Client]:
        headers = {"Authorization": f"Bearer {self.tokens[token]}"}
        transport = streamable_http_client
        async with (
            create_mcp_http_client(headers=headers) as http,
            Client(transport(f"{self.url}/mcp", http_client=http), **options) as client,
        ):
            yield client


def _config(tmp: Path, db: Path, ledger_url: str) -> Path:
    notes = tmp / "files"
    notes.mkdir()
    (notes / "memo.txt").write_text("invoice 7")
    config = tmp / "ledgerflow.toml"
    q = json.dumps  # a JSON string is a TOML basic string
    config.write_text(
        f"""db = {q(str(db))}
webhook_secret = {q(SECRET)}
timer_interval_seconds = 0.2

[servers.files]
command = {q(sys.executable)}
args = ["-m", {q(SERVER_MODULE)}]
cwd = {q(str(REPO))}
env = {{ NOTES_DIR = {q(str(notes))} }}
expose = true
deny = ["slow"]
rate_limit = "{RATE}/min"
required = true

[servers.ledger]
url = {q(ledger_url)}

[policy.tools]
deny = ["files.transfer"]

[circuit]
threshold = 2
reset_seconds = 600
"""
    )
    return config


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("serve")
    db = tmp / "ledger.db"
    tokens = {}
    for name, scopes, *tools in [
        ("agent", "tools,run,read,audit"),
        ("burst", "tools"),
        ("narrow", "tools", "files.add"),
        ("reader", "read"),
    ]:
        extra = ["--tools", tools[0]] if tools else []
        made = ledgerflow(
            "token", "create", "--name", name, "--scopes", scopes, *extra, "--db", str(db)
        )
        assert made.returncode == 0, made.stderr
        tokens[name] = made.stdout.strip()
    ledger_dir = tmp / "ledger"
    ledger_dir.mkdir()
    with (
        http_server(ledger_dir) as ledger_url,
        serving_http(
            "--config", str(_config(tmp, db, ledger_url)), log=tmp / "serve.log"
        ) as served,
    ):
        yield Gateway(served.url, db, tokens, ledger_dir)


def text(result: CallToolResult) -> str:
    return " ".join(getattr(block, "text", "") for block in result.content)


async def envelopes(gateway: Gateway, **filters: Any) -> list[dict[str, Any]]:
    async with gateway.client("agent") as client:
        result = await client.call_tool("query_envelopes", {"limit": 500, **filters})
    assert not result.is_error, text(result)
    assert result.structured_content is not None
    found: list[dict[str, Any]] = result.structured_content["envelopes"]
    return found


async def test_tokens_see_the_exposed_tools_they_may_call(gateway: Gateway) -> None:
    async with gateway.client("agent") as client:
        names = {tool.name for tool in (await client.list_tools()).tools}
        add = next(t for t in (await client.list_tools()).tools if t.name == "files__add")
    assert {"files__add", "files__read_note", "files__count_to", "run_program"} <= names
    assert "files__slow" not in names  # the server's deny-list
    assert "files__transfer" not in names  # the policy's
    assert not any(name.startswith("ledger__") for name in names)  # not exposed
    assert add.description == "Add two integers."
    assert add.input_schema["required"] == ["a", "b"]
    async with gateway.client("narrow") as client:
        narrow = {t.name for t in (await client.list_tools()).tools if "__" in t.name}
    async with gateway.client("reader") as client:
        reader = {t.name for t in (await client.list_tools()).tools if "__" in t.name}
    assert narrow == {"files__add"}
    assert reader == set()


async def test_a_pass_through_call_is_answered_and_recorded_with_its_principal(
    gateway: Gateway,
) -> None:
    progress: list[tuple[float, float | None, str | None]] = []

    async def heard(done: float, total: float | None, message: str | None) -> None:
        progress.append((done, total, message))

    async with gateway.client("agent") as client:
        added = await client.call_tool("files__add", {"a": 2, "b": 3})
        counted = await client.call_tool("files__count_to", {"n": 3}, progress_callback=heard)
        wrong = await client.call_tool("files__add", {"a": "two", "b": 3})
    assert not added.is_error, text(added)
    assert added.structured_content == {"result": 5}
    assert added.meta is not None
    call_id = added.meta["io.ledgerflow/call-id"]
    assert counted.structured_content == {"result": "counted to 3"}
    assert progress == [(1, 3, "counted 1"), (2, 3, "counted 2"), (3, 3, "counted 3")]
    assert wrong.is_error
    assert "files__add: a: expected integer, got string; nothing was sent" in text(wrong)

    recorded = await envelopes(gateway, execution_id=call_id)
    assert len(recorded) == 1  # one envelope per call, no access envelope beside it
    envelope = recorded[0]
    assert envelope["kind"] == "tool_call"
    assert envelope["seq"] == added.meta["io.ledgerflow/seq"]
    payload = envelope["payload"]
    assert payload["principal"] == "agent"
    assert (payload["server"], payload["tool"]) == ("files", "files.add")
    assert payload["arguments"] == {"a": 2, "b": 3}
    assert payload["output"] == {"result": 5}
    assert payload["outcome"] == "ok"


async def test_refused_calls_are_tool_errors_naming_why_and_denied_envelopes(
    gateway: Gateway,
) -> None:
    async with gateway.client("reader") as client:
        no_scope = await client.call_tool("files__add", {"a": 1, "b": 1})
    async with gateway.client("narrow") as client:
        not_listed = await client.call_tool("files__read_note", {"name": "memo"})
        allowed = await client.call_tool("files__add", {"a": 1, "b": 1})
    async with gateway.client("agent") as client:
        by_policy = await client.call_tool("files__transfer", {"amount": 5, "currency": "EUR"})
        typo = await client.call_tool("files__ad", {"a": 1, "b": 1})
    assert no_scope.is_error and "needs the 'tools' scope" in text(no_scope)
    assert not_listed.is_error
    assert "'narrow' may not call 'files.read_note' (its tools: files.add)" in text(not_listed)
    assert not allowed.is_error
    assert by_policy.is_error and "does not allow tool 'files.transfer'" in text(by_policy)
    assert typo.is_error and "no exposed tool 'files__ad'; did you mean 'files__add'?" in text(typo)

    denied = {
        (e["payload"]["principal"], e["payload"]["target"]): e["payload"]["reason"]
        for e in await envelopes(gateway, kind="denied")
    }
    assert "may not call 'files.read_note'" in denied["narrow", "files.read_note"]
    assert "does not allow tool 'files.transfer'" in denied["agent", "files.transfer"]
    access = await envelopes(gateway, kind="access")
    assert any(
        e["payload"]["principal"] == "reader" and e["payload"]["outcome"] == "denied"
        for e in access
        if e["payload"]["tool"] == "call_tool"
    )


async def test_a_tokens_rate_limit_and_a_tools_circuit_breaker_apply(gateway: Gateway) -> None:
    answers = []
    async with gateway.client("burst") as client:
        for _ in range(3):  # threshold 2: the third call finds the circuit open
            answers.append(await client.call_tool("files__fail", {"reason": "no funds"}))
        while len(answers) < RATE + 1:
            answers.append(await client.call_tool("files__add", {"a": 1, "b": 2}))
    failed, failed_again, open_circuit, *rest = answers
    assert failed.is_error and "refused: no funds" in text(failed)
    assert failed_again.is_error
    assert open_circuit.is_error and "circuit open after 2 consecutive failures" in text(
        open_circuit
    )
    assert [a.is_error for a in rest] == [False] * (RATE - 3) + [True]
    assert f"rate limit {RATE}/min of server 'files' reached for 'burst'" in text(rest[-1])
    async with gateway.client("agent") as client:  # another token has its own window
        assert not (await client.call_tool("files__add", {"a": 1, "b": 2})).is_error

    calls = [
        e
        for e in await envelopes(gateway, kind="tool_call")
        if e["payload"]["principal"] == "burst"
    ]
    outcomes = [e["payload"]["outcome"] for e in calls]
    assert outcomes == ["error"] * 3 + ["ok"] * (RATE - 3)
    assert "refused: no funds" in calls[0]["payload"]["error"]
    assert "circuit open" in calls[2]["payload"]["error"]


async def test_a_program_over_both_servers_suspends_and_a_webhook_resumes_it(
    gateway: Gateway, tmp_path: Path
) -> None:
    program = {
        "name": "memo_to_ledger",
        "steps": [
            {"id": "read", "type": "tool", "tool": "files.read_note", "args": {"name": "memo"}},
            {"id": "count", "type": "tool", "tool": "files.count_to", "args": {"n": 2}},
            {
                "id": "pay",
                "type": "tool",
                "tool": "ledger.request_payment",
                "args": {"order_id": "7"},
            },
            {
                "id": "record",
                "type": "tool",
                "tool": "ledger.write_note",
                "args": {"name": "receipt", "text": "${read.output.text}: ${pay.output.status}"},
                "is_terminal": True,
            },
        ],
    }
    progress: list[str | None] = []

    async def heard(done: float, total: float | None, message: str | None) -> None:
        progress.append(message)

    async with gateway.client("agent") as client:
        started = await client.call_tool(
            "run_program", {"program": program}, progress_callback=heard
        )
        assert not started.is_error, text(started)
        assert started.structured_content is not None
        trace_id = started.structured_content["trace_id"]
        assert started.structured_content["status"] == "SUSPENDED"
        assert "step 'count': counted 1 (1/2)" in progress  # the downstream tool's progress
        assert "step 'count': counted 2 (2/2)" in progress
        assert "step 'read' SUCCESS" in progress

        raw = json.dumps({"id": "evt-paid-7", "status": "paid"}).encode()
        signature = {"Ledgerflow-Signature": sign(SECRET, raw, time.time())}
        async with httpx.AsyncClient() as http:
            hooked = await http.post(
                f"{gateway.url}/hooks/{trace_id}", content=raw, headers=signature
            )
        assert hooked.status_code == 200, hooked.text

        trace = await client.call_tool("get_trace", {"trace_id": trace_id})
        assert trace.structured_content is not None
        assert trace.structured_content["status"] == "SUCCESS"
        verified = await client.call_tool("verify_ledger", {})
        assert verified.structured_content is not None and verified.structured_content["ok"]

        steps = {
            e["step_id"]: e for e in await envelopes(gateway, execution_id=trace_id, kind="step")
        }
        record = steps["record"]
        assert record["payload"]["tool"] == "ledger.write_note"
        assert record["payload"]["arguments"] == {"name": "receipt", "text": "invoice 7: paid"}
        proof = await client.call_tool("get_proof", {"seq": record["seq"]})
        assert proof.structured_content is not None
    assert (gateway.ledger_notes / "receipt.txt").read_text() == "invoice 7: paid"
    bundle = tmp_path / "proof.json"
    bundle.write_text(json.dumps(proof.structured_content))
    key = verified.structured_content["verifier_keys"][0]
    checked = ledgerflow("verify-proof", str(bundle), "--key", key)
    assert checked.returncode == 0, checked.stdout + checked.stderr


async def test_a_downstream_tool_list_change_reaches_clients_of_both_protocol_eras(
    gateway: Gateway,
) -> None:
    # Before 2026-07-28: a notification on the session that listed the tools.
    heard = asyncio.Event()

    async def on_message(message: Any) -> None:
        method = getattr(getattr(message, "root", message), "method", None)
        if method == "notifications/tools/list_changed":
            heard.set()

    async with gateway.client("agent", mode="legacy", message_handler=on_message) as legacy:
        await legacy.list_tools()
        grown = await legacy.call_tool("files__grow", {"name": "echo_one"})
        assert not grown.is_error, text(grown)
        await asyncio.wait_for(heard.wait(), 20)
        names = {t.name for t in (await legacy.list_tools(cache_mode="refresh")).tools}
    assert "files__echo_one" in names

    # From 2026-07-28 on: an event on the client's subscriptions/listen stream.
    async with (
        gateway.client("agent") as modern,
        modern.listen(tools_list_changed=True) as changes,
    ):
        grown = await modern.call_tool("files__grow", {"name": "echo_two"})
        assert not grown.is_error, text(grown)
        async with asyncio.timeout(20):
            await anext(aiter(changes))
        names = {t.name for t in (await modern.list_tools(cache_mode="refresh")).tools}
        echoed = await modern.call_tool("files__echo_two", {"text": "hello"})
    assert "files__echo_two" in names
    assert text(echoed) == "hello"
