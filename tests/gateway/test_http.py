"""The HTTP gateway served by a real uvicorn on 127.0.0.1, driven by the SDK's HTTP clients and
by httpx: MCP over Streamable HTTP and SSE, signed webhooks, bearer auth, DNS-rebinding
protection, concurrency and malformed input."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from mcp import Client
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.types import CallToolResult

from examples.payments import TOOLS
from gateway.application.principal import TOOL_SCOPES
from gateway.application.service import LedgerflowService
from gateway.application.workspace import Workspace
from gateway.cli.errors import UsageError
from gateway.cli.main import build_parser
from gateway.http.app import build_app
from gateway.http.tokens import TokenStore
from gateway.http.webhook_signatures import sign
from gateway.settings import Settings
from gateway.tools.circuit import CircuitBreakers
from kernel import Program
from kernel.clock import ManualClock

REPO = Path(__file__).resolve().parents[2]
PAYMENT = Program.from_file(REPO / "examples" / "payment_flow.yaml").to_dict()
ORDER = {"order_id": "A-1001", "amount": 250}
SECRET = "whsec_test_secret"
ACCEPT = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "test", "version": "1"},
    },
}
# Condition steps only: no tool, so 50 of them at once exercise the gateway and the ledger.
CONDITIONS = {
    "name": "conditions",
    "max_steps": 10,
    "steps": [
        {"id": "a", "type": "condition", "condition": "$x > 1", "then": "b", "otherwise": "b"},
        {"id": "b", "type": "condition", "condition": "$x > 1000", "then": "a"},
    ],
}


@dataclass
class Served:
    url: str
    tokens: dict[str, str] = field(default_factory=dict)
    server: uvicorn.Server | None = None
    error: BaseException | None = None

    def headers(self, token: str = "admin") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[token]}"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _serve(db: Path, served: Served, port: int) -> None:
    """Open everything on the server thread's own loop, issue the tokens, serve."""
    clock = ManualClock()
    async with await Workspace.open(db, kek_path=f"{db}.kek") as workspace:
        breakers = CircuitBreakers(clock=clock)
        service = await LedgerflowService.open(workspace, breakers.wrap_all(TOOLS))
        store = TokenStore.in_file(db, clock=clock)
        await store.open()
        try:
            served.tokens["admin"], _ = await store.create("admin", ["run", "read", "audit"])
            served.tokens["reader"], _ = await store.create("reader", ["read"])
            served.tokens["expired"], _ = await store.create("expired", ["read"], 60)
            served.tokens["revoked"], _ = await store.create("revoked", ["read"])
            await store.revoke("revoked")
            clock.advance(120)  # past the expiry of "expired"
            settings = Settings(transport="http", port=port, webhook_secret=SECRET)
            app = build_app(service, store, settings, breakers=breakers)
            config = uvicorn.Config(
                app, host="127.0.0.1", port=port, log_level="warning", access_log=False
            )
            served.server = uvicorn.Server(config)
            await served.server.serve()
        finally:
            await store.close()
            await service.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    port = free_port()
    result = Served(url=f"http://127.0.0.1:{port}")
    db = tmp_path_factory.mktemp("http") / "ledger.db"

    def run() -> None:
        try:
            asyncio.run(_serve(db, result, port))
        except BaseException as exc:  # reported by the fixture, not lost in the thread
            result.error = exc

    thread = threading.Thread(target=run, name="ledgerflow-http", daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not (result.server is not None and result.server.started):
        assert result.error is None, result.error
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    yield result
    result.server.should_exit = True
    thread.join(15)


@asynccontextmanager
async def streamable(served: Served, token: str = "admin") -> AsyncIterator[Client]:
    async with (
        create_mcp_http_client(headers=served.headers(token)) as http,
        Client(streamable_http_client(f"{served.url}/mcp", http_client=http)) as client,
    ):
        yield client


async def ok(client: Client, tool: str, **arguments: Any) -> dict[str, Any]:
    result = await client.call_tool(tool, arguments)
    assert not result.is_error, text(result)
    assert result.structured_content is not None
    return result.structured_content


def text(result: CallToolResult) -> str:
    return " ".join(getattr(block, "text", "") for block in result.content)


def signed(body: dict[str, Any], secret: str = SECRET) -> tuple[bytes, dict[str, str]]:
    raw = json.dumps(body).encode()
    return raw, {"Ledgerflow-Signature": sign(secret, raw, time.time())}


async def suspended_payment(client: Client) -> str:
    run = await ok(client, "run_program", program=PAYMENT, context=ORDER)
    assert run["status"] == "SUSPENDED"
    return str(run["trace_id"])


# --- MCP over HTTP -----------------------------------------------------------------------------


async def test_streamable_http_runs_and_a_signed_webhook_resumes(served: Served) -> None:
    async with streamable(served) as client:
        tools = (await client.list_tools()).tools
        assert {tool.name for tool in tools} == set(TOOL_SCOPES)
        trace_id = await suspended_payment(client)
        raw, headers = signed({"id": "evt_1", "status": "succeeded"})
        async with httpx.AsyncClient(base_url=served.url) as http:
            first = await http.post(f"/hooks/{trace_id}", content=raw, headers=headers)
            again = await http.post(f"/hooks/{trace_id}", content=raw, headers=headers)
        assert first.status_code == 200, first.text
        assert first.json() == {"status": "SUCCESS", "trace_id": trace_id}
        assert again.status_code == 200 and again.json()["status"] == "duplicate"
        trace = await ok(client, "get_trace", trace_id=trace_id)
        assert trace["status"] == "SUCCESS"
        outputs = {step["step_id"]: step["output"] for step in trace["steps"]}
        assert outputs["capture"]["captured"] is True  # capture read the webhook's event


async def test_webhook_refusals_change_nothing(served: Served) -> None:
    async with streamable(served) as client, httpx.AsyncClient(base_url=served.url) as http:
        trace_id = await suspended_payment(client)
        raw, _ = signed({"id": "evt_bad", "status": "succeeded"})
        forged = {"Ledgerflow-Signature": sign("another secret", raw, time.time())}
        stale = {"Ledgerflow-Signature": sign(SECRET, raw, time.time() - 600)}
        for headers in (forged, stale, {}):
            refused = await http.post(f"/hooks/{trace_id}", content=raw, headers=headers)
            assert refused.status_code == 401, refused.text
        assert (await ok(client, "get_trace", trace_id=trace_id))["status"] == "SUSPENDED"

        raw, headers = signed({"status": "succeeded"})  # id in the header instead
        headers["Ledgerflow-Event-Id"] = "evt_header"
        unknown = await http.post("/hooks/no-such-run", content=raw, headers=headers)
        assert unknown.status_code == 404
        done = await http.post(f"/hooks/{trace_id}", content=raw, headers=headers)
        assert done.json()["status"] == "SUCCESS"
        raw, headers = signed({"id": "evt_late", "status": "succeeded"})
        late = await http.post(f"/hooks/{trace_id}", content=raw, headers=headers)
        assert late.status_code == 409, late.text


async def test_sse_client_lists_tools_and_reads_a_trace(served: Served) -> None:
    async with streamable(served) as client:
        trace_id = await suspended_payment(client)
    async with Client(sse_client(f"{served.url}/sse", headers=served.headers("reader"))) as sse:
        assert {tool.name for tool in (await sse.list_tools()).tools} == set(TOOL_SCOPES)
        trace = await ok(sse, "get_trace", trace_id=trace_id)
        assert trace["status"] == "SUSPENDED"


async def test_fifty_concurrent_sessions_then_the_ledger_verifies(served: Served) -> None:
    async def one(x: int) -> str:
        async with streamable(served) as client:
            run = await ok(client, "run_program", program=CONDITIONS, context={"x": x})
            return str(run["status"])

    statuses = await asyncio.gather(*(one(x) for x in range(50)))
    assert statuses == ["SUCCESS"] * 50
    async with streamable(served) as client:
        report = await ok(client, "verify_ledger")
    assert report["ok"], report


# --- authentication and scopes -----------------------------------------------------------------


async def post_initialize(served: Served, headers: dict[str, str], path: str = "/mcp") -> Any:
    async with httpx.AsyncClient(base_url=served.url) as http:
        return await http.post(path, json=INITIALIZE, headers={**ACCEPT, **headers})


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({}, "missing"),
        ({"Authorization": "Bearer lf_" + "x" * 43}, "invalid"),
        ({"Authorization": "Bearer not-a-token"}, "invalid"),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, "invalid"),
    ],
)
async def test_requests_without_a_valid_token_get_401(
    served: Served, headers: dict[str, str], reason: str
) -> None:
    for path in ("/mcp", "/messages/?session_id=0123"):
        response = await post_initialize(served, headers, path)
        assert response.status_code == 401
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert response.json()["reason"] == reason


@pytest.mark.parametrize("token", ["expired", "revoked"])
async def test_expired_and_revoked_tokens_get_401_saying_so(served: Served, token: str) -> None:
    response = await post_initialize(served, served.headers(token))
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["www-authenticate"]
    assert response.json()["reason"] == token
    assert served.tokens[token] not in response.text


async def test_sse_stream_needs_a_token(served: Served) -> None:
    async with httpx.AsyncClient(base_url=served.url) as http:
        response = await http.get("/sse")
    assert response.status_code == 401


async def test_a_token_in_the_query_string_is_refused(served: Served) -> None:
    token = served.tokens["admin"]
    response = await post_initialize(served, served.headers(), f"/mcp?access_token={token}")
    assert response.status_code == 401
    assert "query string" in response.json()["message"]
    assert token not in response.text


async def test_a_valid_token_initializes(served: Served) -> None:
    response = await post_initialize(served, served.headers("reader"))
    assert response.status_code == 200
    assert "mcp-session-id" in response.headers


async def test_the_2025_11_25_wire_still_initializes_over_streamable_http(
    served: Served,
) -> None:
    # The SDK client of the other tests speaks the current wire; clients of the previous era
    # open with an initialize request of their version and must be answered in it.
    version = "2025-11-25"
    hello = {**INITIALIZE, "params": {**INITIALIZE["params"], "protocolVersion": version}}
    async with httpx.AsyncClient(base_url=served.url) as http:
        response = await http.post("/mcp", json=hello, headers={**ACCEPT, **served.headers()})
    assert response.status_code == 200
    text = response.text
    body = json.loads(text[text.index("{") :]) if not text.startswith("{") else response.json()
    assert body["result"]["protocolVersion"] == version


async def test_a_tool_outside_the_tokens_scopes_says_which_scope(served: Served) -> None:
    async with streamable(served, "reader") as client:
        result = await client.call_tool("run_program", {"program": CONDITIONS})
        assert result.is_error
        assert "'reader' may not call run_program" in text(result)
        assert "'run' scope" in text(result)
        assert (await client.call_tool("list_programs", {})).is_error is False
    async with streamable(served) as admin:
        page = await ok(admin, "query_envelopes", kind="access", limit=500)
    callers = {(e["payload"]["principal"], e["payload"]["outcome"]) for e in page["envelopes"]}
    assert ("reader", "denied") in callers and ("reader", "ok") in callers


@pytest.mark.parametrize(
    ("header", "status"),
    [({"Host": "evil.example"}, 421), ({"Origin": "http://evil.example"}, 403)],
)
async def test_dns_rebinding_protection(
    served: Served, header: dict[str, str], status: int
) -> None:
    response = await post_initialize(served, {**served.headers(), **header})
    assert response.status_code == status


# --- probes and malformed input ----------------------------------------------------------------


async def test_health_and_readiness(served: Served) -> None:
    async with streamable(served) as client:
        await suspended_payment(client)  # the tools it calls get a breaker
    async with httpx.AsyncClient(base_url=served.url) as http:
        alive = await http.get("/healthz")
        ready = await http.get("/readyz")
    assert alive.status_code == 200
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"] == {"started": True, "database": True, "ledger_writable": True}
    assert ready.json()["circuits"]["reserve_funds"]["state"] == "closed"


async def session(http: httpx.AsyncClient) -> dict[str, str]:
    """Initialize a raw session; the headers its later requests need."""
    response = await http.post("/mcp", json=INITIALIZE)
    assert response.status_code == 200, response.text
    headers = {"mcp-session-id": response.headers["mcp-session-id"]}
    headers["mcp-protocol-version"] = "2025-06-18"
    initialized = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    assert (await http.post("/mcp", json=initialized, headers=headers)).status_code == 202
    return headers


def run_call(program: str, context: str) -> str:
    arguments = f'{{"program":{program},"context":{context}}}'
    params = f'{{"name":"run_program","arguments":{arguments}}}'
    return f'{{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{params}}}'


async def test_malformed_input_gets_clear_errors_and_the_server_stays_up(served: Served) -> None:
    headers = {**ACCEPT, **served.headers()}
    async with httpx.AsyncClient(base_url=served.url, headers=headers, timeout=30) as http:
        ids = await session(http)
        bad = await http.post("/mcp", content=b'{"jsonrpc": "2.0", "id": 1, "meth', headers=ids)
        assert bad.status_code == 400 and bad.json()["error"]["code"] == -32700

        huge = dict(CONDITIONS, description="x" * (10 * 1024 * 1024))
        too_big = await http.post(
            "/mcp", content=run_call(json.dumps(huge), '{"x": 2}'), headers=ids
        )
        assert too_big.status_code == 413 and "too large" in too_big.text

        deep = '{"n":' * 5000 + "1" + "}" * 5000
        nested = await http.post(
            "/mcp",
            content=run_call(json.dumps(CONDITIONS), f'{{"x":2,"deep":{deep}}}'),
            headers=ids,
        )
        assert nested.status_code == 400
        assert "recursion limit" in nested.json()["error"]["message"]

        fine = await http.post(
            "/mcp", content=run_call(json.dumps(CONDITIONS), '{"x": 2}'), headers=ids
        )
        assert fine.status_code == 200 and '\\"status\\": \\"SUCCESS\\"' in fine.text


# --- the command line --------------------------------------------------------------------------


def cli(*argv: str) -> int:
    """A command run in this process, its errors raised (main() would print them)."""
    args = build_parser().parse_args(argv)
    return int(args.handler(args))


def test_token_create_list_revoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = str(tmp_path / "ledger.db")
    assert (
        cli(
            "token",
            "create",
            "--name",
            "ci",
            "--scopes",
            "run,read",
            "--expires",
            "30d",
            "--db",
            db,
        )
        == 0
    )
    created = capsys.readouterr()
    token = created.out.strip()
    assert token.startswith("lf_") and "only time" in created.err and token not in created.err
    assert cli("token", "list", "--db", db) == 0
    listed = capsys.readouterr().out
    assert "ci" in listed and "read,run" in listed and "active" in listed and token not in listed
    assert cli("token", "revoke", "ci", "--db", db) == 0
    assert "revoked token 'ci'" in capsys.readouterr().out
    cli("token", "list", "--db", db)
    assert "revoked" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--scopes", "run,fly"], "unknown scope 'fly'"),
        (["--scopes", "run", "--expires", "soon"], "--expires 'soon'"),
    ],
)
def test_token_create_refuses_bad_input(tmp_path: Path, argv: list[str], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        cli("token", "create", "--name", "x", *argv, "--db", str(tmp_path / "ledger.db"))


def test_serve_http_refuses_a_public_bind_without_auth(tmp_path: Path) -> None:
    config = tmp_path / "ledgerflow.toml"
    config.write_text("auth_required = false\n")
    with pytest.raises(UsageError, match=r"refusing to listen on 0\.0\.0\.0"):
        cli("serve-http", "--host", "0.0.0.0", "--config", str(config), "--db", "x.db")


@pytest.mark.parametrize("serve", [["serve-http"], ["serve", "--transport", "http"]])
def test_serve_http_serves_with_tokens(tmp_path: Path, serve: list[str]) -> None:
    db, port = str(tmp_path / "ledger.db"), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGERFLOW_")}
    env["LEDGERFLOW_WEBHOOK_SECRET"] = SECRET
    boot = [sys.executable, "-m", "gateway.cli"]
    made = subprocess.run(
        [*boot, "token", "create", "--name", "ci", "--scopes", "read", "--db", db],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    token = made.stdout.strip()
    command = [
        *boot,
        *serve,
        "--port",
        str(port),
        "--db",
        db,
        "--tools",
        "examples.payments:TOOLS",
    ]
    server = subprocess.Popen(command, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            assert server.poll() is None, server.communicate()[1]
            assert time.monotonic() < deadline, "serve-http did not start"
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/readyz").status_code == 200:
                    break
            time.sleep(0.1)
        refused = httpx.post(f"{url}/mcp", json=INITIALIZE, headers=ACCEPT)
        assert refused.status_code == 401
        headers = {**ACCEPT, "Authorization": f"Bearer {token}"}
        assert httpx.post(f"{url}/mcp", json=INITIALIZE, headers=headers).status_code == 200
    finally:
        server.terminate()
        _, stderr = server.communicate(timeout=15)
    assert token not in stderr  # never logged
