"""ledgerflow on PostgreSQL for the comparative benchmark (workloads 8 and 9): a fresh schema
per repetition, and N gateway-like instances as N processes sharing it.

The server is LEDGERFLOW_BENCH_POSTGRES (default postgresql://postgres@127.0.0.1:5432/test).
An instance here is a process with its own pool, Ledger and run index, as `serve-http` has; the
three of a repetition open their ledgers first, then start together on a signal and each runs
its share of the workflows; the time measured is from the first start to the last finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import bench_common as common

HERE = Path(__file__).resolve().parent
SERVER = os.environ.get("LEDGERFLOW_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


@contextlib.contextmanager
def schema() -> Iterator[str]:
    """A new schema, dropped afterwards; yields the ledger's URL in it."""
    name = f"bench_{uuid.uuid4().hex[:12]}"

    async def run(sql: str) -> None:
        connection = await asyncpg.connect(SERVER)
        try:
            await connection.execute(sql)
        finally:
            await connection.close()

    asyncio.run(run(f'CREATE SCHEMA "{name}"'))
    try:
        yield f"{SERVER}{'&' if '?' in SERVER else '?'}schema={name}"
    finally:
        asyncio.run(run(f'DROP SCHEMA "{name}" CASCADE'))


async def server_settings(url: str) -> dict[str, str]:
    connection = await asyncpg.connect(SERVER)
    try:
        version = await connection.fetchval("SHOW server_version")
        commit = await connection.fetchval("SHOW synchronous_commit")
        fsync = await connection.fetchval("SHOW fsync")
    finally:
        await connection.close()
    return {
        "ledger": f"PostgreSQL {version} on loopback, synchronous_commit={commit}, fsync={fsync}",
        "run index": "same database (asyncpg pool shared with the ledger)",
    }


def instances(spec: dict[str, Any], url: str, count: int) -> float:
    """Run `spec["runs"]` workflows split over `count` instance processes; wall seconds from the
    first start to the last finish."""
    runs, concurrency = int(spec["runs"]), int(spec["concurrency"])
    shares = [runs // count + (1 if n < runs % count else 0) for n in range(count)]
    workers = []
    for share in shares:
        worker_spec = {
            "workload": "durable_instance",
            "url": url,
            "runs": share,
            "concurrency": max(1, concurrency // count),
        }
        workers.append(
            subprocess.Popen(
                [sys.executable, str(HERE / "ledgerflow_runner.py"), json.dumps(worker_spec)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
        )
    try:
        for worker in workers:  # every instance has opened its ledger
            assert worker.stdout is not None
            line = worker.stdout.readline()
            if line.strip() != "ready":
                raise RuntimeError(f"instance did not start: {line!r}")
        for worker in workers:
            assert worker.stdin is not None
            worker.stdin.write("go\n")
            worker.stdin.flush()
        spans = []
        for worker in workers:
            out, _ = worker.communicate(timeout=600)
            found = [
                json.loads(line[len(common.RESULT_MARKER) :])
                for line in out.splitlines()
                if line.startswith(common.RESULT_MARKER)
            ]
            if worker.returncode != 0 or not found or not found[0].get("ok"):
                raise RuntimeError(f"instance failed (exit {worker.returncode}): {out[-800:]}")
            spans.append(found[0])
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
    return max(s["end"] for s in spans) - min(s["start"] for s in spans)
