"""The `ledgerflow` command as the tests run it: in a subprocess, with an environment free of
the developer's LEDGERFLOW_* settings, and `serve --transport http` started and waited for."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
COMMAND = [sys.executable, "-m", "gateway.cli"]


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGERFLOW_")}
    return {**env, **(extra or {})}


def ledgerflow(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*COMMAND, *args],
        cwd=REPO,
        env=clean_env(env),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Serving:
    url: str  # http://127.0.0.1:PORT
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def alive(self) -> bool:
        return self.process.poll() is None


@contextlib.contextmanager
def serving_http(
    *args: str, log: Path, env: dict[str, str] | None = None, timeout: float = 60
) -> Iterator[Serving]:
    """`ledgerflow serve --transport http ARGS` on a free port, once /readyz answers 200;
    stopped after (its output goes to `log`)."""
    port = free_port()
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*COMMAND, "serve", "--transport", "http", *args, "--port", str(port)],
            cwd=REPO,
            env=clean_env(env),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            time.sleep(0.1)
        yield Serving(url, process, log)
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
