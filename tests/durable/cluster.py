"""Gateway instances sharing one PostgreSQL database, as real processes: `ledgerflow serve-http`
started with the command line, spoken to over MCP (Streamable HTTP) and signed webhooks, killed
with SIGKILL.

`db init` runs first as the owner and grants an application role; every instance connects as
that role, with the same KEK and signing key files, as a deployment would.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from gateway.http.webhook_signatures import sign

ROOT = Path(__file__).parents[2]
SECRET = "whsec_cluster_test"
BOOT = [sys.executable, "-m", "gateway.cli"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Instance:
    name: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.alive:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""


@dataclass
class Cluster:
    """Instances over the database `url` (the application role's), files in `directory`."""

    url: str
    directory: Path
    lease_seconds: float = 2.0
    instances: list[Instance] = field(default_factory=list)

    @property
    def effects(self) -> Path:
        return self.directory / "effects"

    @property
    def kek(self) -> Path:
        return self.directory / "ledger.kek"

    @property
    def signing_key(self) -> Path:
        return self.directory / "ledger.signing-key"

    def env(self, name: str = "admin") -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGERFLOW_")}
        env.update(
            LEDGERFLOW_KEK_FILE=str(self.kek),
            LEDGERFLOW_SIGNING_KEY_FILE=str(self.signing_key),
            LEDGERFLOW_WEBHOOK_SECRET=SECRET,
            LEDGERFLOW_AUTH_REQUIRED="false",  # loopback only
            LEDGERFLOW_LEASE_SECONDS=str(self.lease_seconds),
            LEDGERFLOW_TIMER_INTERVAL_SECONDS="0.2",
            LEDGERFLOW_TEST_EFFECTS=str(self.effects),
            LEDGERFLOW_TEST_INSTANCE=name,
        )
        return env

    def cli(self, *args: str, db: str | None = None) -> subprocess.CompletedProcess[str]:
        """A `ledgerflow` command against the cluster's database (or `db`)."""
        return subprocess.run(
            [*BOOT, *args, "--db", db or self.url],
            cwd=ROOT,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=120,
        )

    def start(self, name: str) -> Instance:
        port = free_port()
        log = self.directory / f"{name}.log"
        command = [*BOOT, "serve-http", "--port", str(port), "--db", self.url]
        command += ["--tools", "tests.durable.cluster_tools:TOOLS"]
        with log.open("wb") as out:
            process = subprocess.Popen(
                command, cwd=ROOT, env=self.env(name), stdout=out, stderr=subprocess.STDOUT
            )
        instance = Instance(name, port, process, log)
        self.instances.append(instance)
        return instance

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        for instance in self.instances:
            while True:
                assert instance.alive, f"{instance.name} exited:\n{instance.tail()}"
                assert time.monotonic() < deadline, f"{instance.name} not ready:\n{instance.tail()}"
                with contextlib.suppress(httpx.TransportError):
                    if httpx.get(f"{instance.url}/readyz", timeout=2).status_code == 200:
                        break
                time.sleep(0.1)

    def close(self) -> None:
        for instance in self.instances:
            instance.stop()

    def live(self) -> list[Instance]:
        return [instance for instance in self.instances if instance.alive]


@contextlib.asynccontextmanager
async def mcp(instance: Instance) -> AsyncIterator[Client]:
    async with (
        create_mcp_http_client() as http,
        Client(streamable_http_client(f"{instance.url}/mcp", http_client=http)) as client,
    ):
        yield client


async def call(client: Client, tool: str, **arguments: Any) -> dict[str, Any]:
    result = await client.call_tool(tool, arguments)
    assert not result.is_error, " ".join(getattr(b, "text", "") for b in result.content)
    assert result.structured_content is not None
    return result.structured_content


def signed(event: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
    raw = json.dumps(event).encode()
    return raw, {"Ledgerflow-Signature": sign(SECRET, raw, time.time())}


async def hook(
    http: httpx.AsyncClient, instance: Instance, trace_id: str, event: dict[str, Any]
) -> httpx.Response:
    raw, headers = signed(event)
    return await http.post(
        f"{instance.url}/hooks/{trace_id}", content=raw, headers=headers, timeout=30
    )


def read_effects(path: Path) -> dict[tuple[str, str], list[str]]:
    """(trace, step) -> the instances that executed it, in order."""
    found: dict[tuple[str, str], list[str]] = defaultdict(list)
    if path.exists():
        for line in path.read_text().splitlines():
            trace_id, step, instance = line.split(" ")
            found[trace_id, step].append(instance)
    return found
