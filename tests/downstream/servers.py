"""Downstream MCP servers for the tests: the SDK-written files server over stdio or HTTP."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.processes import REPO, free_port

SERVER_MODULE = "tests.downstream.files_server"


def stdio_config(notes: Path, **extra: Any) -> dict[str, Any]:
    """A `[servers.NAME]` table that starts the files server over stdio."""
    env = {"NOTES_DIR": str(notes), **extra.pop("env", {})}
    return {
        "command": sys.executable,
        "args": ["-m", SERVER_MODULE],
        "env": env,
        "cwd": str(REPO),
        **extra,
    }


@contextlib.contextmanager
def http_server(
    notes: Path, env: dict[str, str] | None = None, port: int | None = None
) -> Iterator[str]:
    """The files server over Streamable HTTP on loopback; yields its URL."""
    port = port or free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", SERVER_MODULE, "http", str(port)],
        cwd=REPO,
        env={**os.environ, "NOTES_DIR": str(notes), **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            assert process.poll() is None, "the HTTP test server exited"
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            assert time.monotonic() < deadline, "the HTTP test server did not start"
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def processes_with(fragment: str) -> list[int]:
    """The pids of live processes whose command line holds `fragment` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:  # it ended while we looked
            continue
        if fragment in cmdline and state != "Z":
            found.append(int(entry.name))
    return found


def wait_gone(fragment: str, timeout: float = 10.0) -> list[int]:
    """Wait until no process holds `fragment`; returns those still there at the deadline."""
    deadline = time.monotonic() + timeout
    while (left := processes_with(fragment)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left
