"""Shared by every runner of the comparative benchmark (standard library only).

Each runner (benchmarks/ledgerflow_runner.py and the scripts beside this file, each run inside
its own system's virtualenv) receives one JSON workload spec as its first argument (or on stdin),
performs ONE repetition in a fresh process, and prints one line `BENCH_RESULT {json}` that the
harness parses. The program shapes, the no-op tool body, the concurrency driver and the
measurements live here so every system gets exactly the same ones.
"""

from __future__ import annotations

import asyncio
import json
import platform
import resource
import socket
import sqlite3
import subprocess
import sys
import time
import traceback
import urllib.request
from collections.abc import Awaitable, Callable
from typing import Any

RESULT_MARKER = "BENCH_RESULT "
# The event every suspended run is resumed with.
RESUME_EVENT = {"approved": True}


def noop() -> None:
    """The body of every tool, step and node in every system: does nothing."""
    return None


# -- program shapes (ledgerflow's DSL; llm-nano-vm reads the same dicts) -----------------------


def kernel_program() -> dict[str, Any]:
    """Workload 1: tool, tool, condition, tool, tool (five steps executed on the taken path)."""
    return {
        "name": "kernel5",
        "steps": [
            {"id": "a", "type": "tool", "tool": "noop"},
            {"id": "b", "type": "tool", "tool": "noop"},
            {"id": "check", "type": "condition", "condition": "$x == 1", "then": "c"},
            {"id": "c", "type": "tool", "tool": "noop", "next_step": "d"},
            {"id": "d", "type": "tool", "tool": "noop"},
        ],
    }


KERNEL_CONTEXT = {"x": 1}
KERNEL_STEPS = 5


def linear_program(steps: int) -> dict[str, Any]:
    """Workload 2: a linear program of `steps` no-op tool steps."""
    return {
        "name": f"linear{steps}",
        "steps": [{"id": f"s{i}", "type": "tool", "tool": "noop"} for i in range(steps)],
    }


def durable_program() -> dict[str, Any]:
    """Workloads 3 and 4: three no-op tool steps."""
    return {
        "name": "durable3",
        "steps": [{"id": name, "type": "tool", "tool": "noop"} for name in ("a", "b", "c")],
    }


DURABLE_STEPS = 3


def suspend_program() -> dict[str, Any]:
    """Workload 5: a tool, a tool that suspends (waits for an external event), a tool."""
    return {
        "name": "suspend3",
        "steps": [
            {"id": "a", "type": "tool", "tool": "noop"},
            {"id": "wait", "type": "tool", "tool": "pending"},
            {"id": "b", "type": "tool", "tool": "noop"},
        ],
    }


# -- measuring ---------------------------------------------------------------------------------


async def run_bounded(total: int, concurrency: int, one: Callable[[int], Awaitable[Any]]) -> None:
    """Run one(0) .. one(total - 1) with at most `concurrency` in flight (worker tasks)."""
    next_index = 0

    async def worker() -> None:
        nonlocal next_index
        while next_index < total:
            index = next_index
            next_index += 1
            await one(index)

    await asyncio.gather(*(worker() for _ in range(max(1, min(concurrency, total)))))


def peak_rss_kib() -> int:
    """Peak resident set size of this process so far (ru_maxrss, KiB on Linux)."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100), as numpy's default."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("percentile of no values")
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


class Stopwatch:
    def __enter__(self) -> Stopwatch:
        self.start = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start


SYNCHRONOUS_NAMES = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}


def sqlite_settings(connection: sqlite3.Connection) -> dict[str, str]:
    """journal_mode and synchronous as seen by this (stdlib sqlite3) connection."""
    mode = connection.execute("PRAGMA journal_mode").fetchone()[0]
    level = connection.execute("PRAGMA synchronous").fetchone()[0]
    return {"journal_mode": str(mode), "synchronous": SYNCHRONOUS_NAMES.get(level, str(level))}


def file_journal_mode(path: str) -> str:
    """The journal mode stored in a database file (WAL is persistent; others read as delete)."""
    connection = sqlite3.connect(path)
    try:
        return str(connection.execute("PRAGMA journal_mode").fetchone()[0])
    finally:
        connection.close()


# -- protocol ----------------------------------------------------------------------------------


# --- MCP round trips: servers in subprocesses, timed sequential calls ----------------------

START_TIMEOUT_SECONDS = 30.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_http_ok(url: str, process: subprocess.Popen[bytes], what: str) -> None:
    """Poll `url` until it answers 200; fail if `process` exits first or it takes too long."""
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode} at start-up")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} not ready at {url} after {START_TIMEOUT_SECONDS:.0f} s")


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


async def timed_calls(
    call: Callable[[], Awaitable[float]], calls: int, warmup: int
) -> dict[str, Any]:
    """`warmup` untimed calls, then `calls` timed ones (each returns its own seconds)."""
    for _ in range(warmup):
        await call()
    latencies: list[float] = []
    with Stopwatch() as watch:
        for _ in range(calls):
            latencies.append(await call() * 1000)
    return {
        "runs": calls,
        "seconds": watch.seconds,
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
    }


def read_spec() -> dict[str, Any]:
    text = sys.argv[1] if len(sys.argv) > 1 else sys.stdin.read()
    spec: dict[str, Any] = json.loads(text)
    return spec


def emit(result: dict[str, Any]) -> None:
    result.setdefault("python", platform.python_version())
    result.setdefault("sqlite", sqlite3.sqlite_version)
    print(RESULT_MARKER + json.dumps(result), flush=True)


def main(
    handlers: dict[str, Callable[[dict[str, Any]], dict[str, Any]]],
    versions: Callable[[], dict[str, str]],
) -> None:
    """Dispatch the spec's workload to its handler and print the result (or the error)."""
    spec = read_spec()
    workload = spec.get("workload", "")
    try:
        handler = handlers[workload]
    except KeyError:
        emit({"ok": False, "error": f"workload {workload!r} is not supported by this runner"})
        sys.exit(2)
    try:
        result = handler(spec)
    except Exception as error:
        tail = traceback.format_exc().strip().splitlines()[-6:]
        emit({"ok": False, "error": f"{type(error).__name__}: {error}", "traceback": tail})
        sys.exit(1)
    result.setdefault("ok", True)
    result["versions"] = versions()
    emit(result)
