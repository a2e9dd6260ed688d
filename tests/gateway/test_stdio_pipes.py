"""stdin and stdout read and written on the event loop (gateway.mcp.stdio_pipes): pipes, and
files, which cannot be polled; every request read before stdin ends is answered."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

from gateway.mcp.stdio_pipes import MAX_LINE_BYTES, _Lines
from tests.gateway.test_mcp_stdio import environment, serve_command


def _requests() -> bytes:
    hello = {"protocolVersion": "2025-11-25", "capabilities": {}}
    hello["clientInfo"] = {"name": "test", "version": "0"}
    messages = [
        {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": hello},
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
    ]
    return "".join(json.dumps(m) + "\n" for m in messages).encode()


def _answers(stdout: bytes) -> dict[int, dict[str, object]]:
    return {m["id"]: m for m in map(json.loads, stdout.decode().splitlines()) if "id" in m}


def test_requests_from_a_file_are_all_answered_into_a_file(tmp_path: Path) -> None:
    # Files cannot be polled: stdin is read by a thread, stdout written directly.
    requests, answers = tmp_path / "requests.jsonl", tmp_path / "answers.jsonl"
    requests.write_bytes(_requests())
    with requests.open("rb") as stdin, answers.open("wb") as stdout:
        done = subprocess.run(
            [sys.executable, *serve_command("--db", str(tmp_path / "ledger.db"))],
            stdin=stdin,
            stdout=stdout,
            stderr=subprocess.PIPE,
            env=environment(),
            timeout=60,
        )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    answered = _answers(answers.read_bytes())
    assert sorted(answered) == [1, 2]  # the last request too, though stdin ended right after it
    tools = answered[2]["result"]
    assert isinstance(tools, dict) and "run_program" in {t["name"] for t in tools["tools"]}


def test_requests_through_a_pipe_are_all_answered_when_stdin_ends_at_once(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, *serve_command("--db", str(tmp_path / "ledger.db"))],
        input=_requests(),
        capture_output=True,
        env=environment(),
        timeout=60,
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert sorted(_answers(done.stdout)) == [1, 2]


async def test_an_overlong_line_is_skipped_and_the_next_one_read() -> None:
    reader = asyncio.StreamReader(limit=16)
    reader.feed_data(b'{"far too long for the limit": 1}\n{"id": 1}\n')
    reader.feed_eof()
    lines = [line async for line in _Lines(reader)]
    assert lines == [f"request line longer than {MAX_LINE_BYTES} bytes\n", '{"id": 1}\n']
