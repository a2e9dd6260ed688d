"""Downstream MCP servers called as program tools: real SDK servers, over stdio and HTTP."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.downstream.config import parse_server
from gateway.downstream.connection import DownstreamError, ServerState
from gateway.downstream.pool import DownstreamServers
from gateway.downstream.program_tools import DownstreamToolError
from kernel.tools import ToolContext
from tests.downstream.servers import free_port, http_server, stdio_config

CTX = ToolContext("trace-1", "charge", 1, "trace-1:charge:1")
TOKEN = "tok-7c1f9b2e-downstream-secret"


def servers(**configs: dict[str, Any]) -> DownstreamServers:
    parsed = {name: parse_server(name, config, "test") for name, config in configs.items()}
    return DownstreamServers(parsed, environ={"FILES_TOKEN": TOKEN})


async def test_a_stdio_servers_tools_run_as_program_tools(tmp_path: Path) -> None:
    pool = servers(files=stdio_config(tmp_path, deny=["write_*"]))
    try:
        assert await pool.connect() == []
        tools = pool.tools()
        assert "files.add" in tools and "files.read_note" in tools
        assert "files.write_note" not in tools  # denied
        assert await tools["files.add"](CTX, a=2, b=40) == {"result": 42}
        (tmp_path / "memo.txt").write_text("hello")
        assert await tools["files.read_note"](CTX, name="memo") == {"name": "memo", "text": "hello"}
    finally:
        await pool.close()
    assert pool.servers["files"].state is ServerState.CLOSED


async def test_an_error_result_raises_and_bad_arguments_are_never_sent(tmp_path: Path) -> None:
    pool = servers(files=stdio_config(tmp_path))
    try:
        await pool.connect()
        tools = pool.tools()
        with pytest.raises(DownstreamToolError, match=r"files\.fail failed: .*refused: no funds"):
            await tools["files.fail"](CTX, reason="no funds")
        with pytest.raises(DownstreamError, match="amount: expected integer, got string"):
            await tools["files.charge"](CTX, amount="12")
        with pytest.raises(DownstreamError, match="missing required argument 'amount'"):
            await tools["files.charge"](CTX)
        assert not (tmp_path / "charges.jsonl").exists()  # nothing reached the server
    finally:
        await pool.close()


async def test_the_idempotency_key_travels_in_the_requests_meta(tmp_path: Path) -> None:
    pool = servers(files=stdio_config(tmp_path))
    try:
        await pool.connect()
        result = await pool.tools()["files.charge"](CTX, amount=5)
    finally:
        await pool.close()
    assert result == {"charged": 5, "key": "trace-1:charge:1"}
    seen = [json.loads(line) for line in (tmp_path / "charges.jsonl").read_text().splitlines()]
    assert [entry["key"] for entry in seen] == ["trace-1:charge:1"]


async def test_a_call_past_its_timeout_fails_and_is_cancelled_downstream(tmp_path: Path) -> None:
    pool = servers(files=stdio_config(tmp_path, timeout_seconds=0.5))
    try:
        await pool.connect()
        started = time.monotonic()
        with pytest.raises(DownstreamError, match=r"'slow' did not answer within 0\.5 s"):
            await pool.tools()["files.slow"](CTX, seconds=30)
        assert time.monotonic() - started < 5
        for _ in range(100):  # the server learns of it by notifications/cancelled
            if (tmp_path / "cancelled").exists():
                break
            await asyncio.sleep(0.05)
        assert (tmp_path / "cancelled").exists()
        # The session survived the slow tool: the next call is answered.
        assert await pool.tools()["files.add"](CTX, a=1, b=1) == {"result": 2}
    finally:
        await pool.close()


async def test_a_killed_server_fails_the_call_in_flight_then_comes_back(tmp_path: Path) -> None:
    pool = servers(files=stdio_config(tmp_path))
    try:
        await pool.connect()
        call = asyncio.create_task(pool.tools()["files.slow"](CTX, seconds=30))
        pid_file = tmp_path / "slow.pid"
        for _ in range(200):
            if pid_file.exists():
                break
            await asyncio.sleep(0.02)
        first_pid = int(pid_file.read_text())
        os.kill(first_pid, signal.SIGKILL)
        with pytest.raises(DownstreamError, match="server 'files' closed the connection"):
            await asyncio.wait_for(call, 10)
        # Reconnected with backoff by the supervisor; a later call waits for it and works.
        assert await pool.tools()["files.add"](CTX, a=3, b=4) == {"result": 7}
        pid_file.unlink()
        await pool.tools()["files.slow"](CTX, seconds=0)
        assert int(pid_file.read_text()) != first_pid  # a new process
    finally:
        await pool.close()


async def test_stderr_goes_to_the_log_with_the_servers_name_and_no_secret(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ledgerflow.downstream")
    pool = servers(files=stdio_config(tmp_path, env={"API_TOKEN": "${FILES_TOKEN}"}))
    try:
        await pool.connect()
        assert await pool.tools()["files.whoami"](CTX) == {"result": "authorized"}
        for _ in range(100):
            if "files server starting" in caplog.text:
                break
            await asyncio.sleep(0.02)
    finally:
        await pool.close()
    assert "[files] files server starting, token=[secret]" in caplog.text
    assert TOKEN not in caplog.text


async def test_an_http_server_is_called_and_reached_again_after_it_restarts(
    tmp_path: Path,
) -> None:
    port = free_port()
    with http_server(tmp_path, port=port) as url:
        pool = servers(web={"url": url, "timeout_seconds": 5})
        try:
            await pool.connect()
            assert await pool.tools()["web.add"](CTX, a=20, b=22) == {"result": 42}
            assert pool.states()["web"]["state"] == "ready"
        except BaseException:
            await pool.close()
            raise
    try:  # the server is gone: the call fails with the server's name
        with pytest.raises(DownstreamError, match="server 'web'"):
            await pool.tools()["web.add"](CTX, a=1, b=1)
        with http_server(tmp_path, port=port):
            for _ in range(100):
                try:
                    assert await pool.tools()["web.add"](CTX, a=1, b=1) == {"result": 2}
                    break
                except DownstreamError:
                    await asyncio.sleep(0.1)
            else:
                raise AssertionError("never reconnected")
    finally:
        await pool.close()


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            {"command": "no-such-command-ledgerflow"},
            "server 'bad': cannot connect: command not found: no-such-command-ledgerflow",
        ),
        ({"url": "http://127.0.0.1:9/mcp"}, "server 'bad': cannot connect: "),
    ],
)
async def test_a_server_that_cannot_start_is_one_line_naming_it(
    config: dict[str, Any], message: str
) -> None:
    pool = servers(bad={**config, "connect_timeout_seconds": 5, "required": True})
    try:
        with pytest.raises(DownstreamError) as caught:
            await pool.connect()
    finally:
        await pool.close()
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)


async def test_an_optional_server_that_is_down_leaves_the_others_serving(tmp_path: Path) -> None:
    pool = servers(
        files=stdio_config(tmp_path, required=True),
        extra={"command": "no-such-command-ledgerflow", "connect_timeout_seconds": 2},
    )
    try:
        problems = await pool.connect()
        assert problems == [
            "server 'extra': cannot connect: command not found: no-such-command-ledgerflow"
        ]
        assert sorted({name.partition(".")[0] for name in pool.tools()}) == ["files"]
        assert pool.states()["extra"]["state"] in ("down", "connecting")
    finally:
        await pool.close()
