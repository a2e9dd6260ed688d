"""DBOS anchor (run inside benchmarks/.venvs/dbos): workloads 3, 4 and 5 on a SQLite system
database, 8 and 9 on PostgreSQL (`backend: postgresql`; DBOS creates its system database there,
dropped after the repetition; recv is woken by LISTEN/NOTIFY, not polling).

DBOS (Transact for Python) stores workflow and step state in its "system database"; a
`sqlite:///path` system_database_url selects SQLite instead of Postgres. Workflows are async
functions decorated `@DBOS.workflow()` calling `@DBOS.step()` functions; `DBOS.launch()` starts
the runtime. Suspend/resume is `await DBOS.recv_async(topic)` inside the workflow and
`await DBOS.send_async(workflow_id, message, topic)` from outside.

Durability: DBOS sets no `synchronous` pragma, so SQLite's default applies (FULL); it sets no
journal mode either, so a new database uses the rollback journal (`delete`). Spec options:
  journal: "default" (as DBOS leaves it) or "wal" (the file is switched to WAL before DBOS opens
           it; journal_mode=WAL is persistent) -- WAL + FULL is ledgerflow's setting.
  poll:    notification_listener_polling_interval_sec (SQLite has no LISTEN/NOTIFY: `recv`
           learns of a message by polling; DBOS's default is 1.0 s).
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import tempfile
import uuid
from importlib import metadata
from pathlib import Path
from typing import Any

import bench_common as common
from dbos import DBOS, DBOSConfig

TOPIC = "event"
_reached: asyncio.Event | None = None


def versions() -> dict[str, str]:
    names = ("dbos", "SQLAlchemy")
    return {name: metadata.version(name) for name in names}


@DBOS.step()
async def noop_step() -> None:
    return common.noop()


@DBOS.step()
async def first_step() -> None:
    # No-op, plus telling the benchmark (in memory) that the run got this far.
    if _reached is not None:
        _reached.set()
    return common.noop()


@DBOS.workflow()
async def durable_workflow() -> None:
    for _ in range(common.DURABLE_STEPS):
        await noop_step()


@DBOS.workflow()
async def suspending_workflow() -> Any:
    await first_step()
    event = await DBOS.recv_async(TOPIC, timeout_seconds=600)
    await noop_step()
    return event


POSTGRES = os.environ.get("LEDGERFLOW_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
_created: list[str] = []


def _postgres_url(name: str) -> str:
    base, _, _ = POSTGRES.rpartition("/")
    return f"{base}/{name}"


def launch_postgres(spec: dict[str, Any]) -> dict[str, str]:
    import psycopg

    name = f"dbos_bench_{uuid.uuid4().hex[:10]}"
    _created.append(name)
    config: DBOSConfig = {
        "name": "ledgerflow-bench",
        "system_database_url": _postgres_url(name),
        "run_admin_server": False,
        "log_level": "WARNING",
    }
    DBOS(config=config)
    DBOS.launch()
    with psycopg.connect(POSTGRES) as connection:
        version = connection.execute("SHOW server_version").fetchone()
        commit = connection.execute("SHOW synchronous_commit").fetchone()
    return {
        "system database": f"PostgreSQL {version[0] if version else '?'} on loopback, "
        f"synchronous_commit={commit[0] if commit else '?'} (DBOS's own database)"
    }


def drop_postgres() -> None:
    import psycopg

    with psycopg.connect(POSTGRES, autocommit=True) as connection:
        while _created:
            name = _created.pop()
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def launch(directory: Path, spec: dict[str, Any]) -> tuple[Path, dict[str, str]]:
    if spec.get("backend") == "postgresql":
        return directory, launch_postgres(spec)
    path = directory / "dbos.sqlite"
    journal = spec.get("journal", "default")
    if journal == "wal":
        connection = sqlite3.connect(path)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.close()
    config: DBOSConfig = {
        "name": "ledgerflow-bench",
        "system_database_url": f"sqlite:///{path}",
        "run_admin_server": False,
        "log_level": "WARNING",
    }
    if spec.get("poll") is not None:
        config["notification_listener_polling_interval_sec"] = float(spec["poll"])
    DBOS(config=config)
    DBOS.launch()
    probe = sqlite3.connect(path)  # a connection configured as DBOS's are (it sets no pragma)
    try:
        observed = common.sqlite_settings(probe)
    finally:
        probe.close()
    settings = {
        "system database": (
            f"SQLite, journal_mode={observed['journal_mode']}, "
            f"synchronous={observed['synchronous']} (SQLite default; DBOS sets none)"
        )
    }
    if spec.get("poll") is not None or spec["workload"] == "suspend_resume":
        settings["recv polling"] = f"{spec.get('poll') or 1.0} s"
    return path, settings


def durable(spec: dict[str, Any]) -> dict[str, Any]:
    runs, concurrency = int(spec["runs"]), int(spec["concurrency"])
    result: dict[str, Any] = {"runs": runs, "steps_per_run": common.DURABLE_STEPS}

    async def one(_: int) -> None:
        await durable_workflow()

    async def measure() -> float:
        await one(-1)  # warm-up
        with common.Stopwatch() as watch:
            await common.run_bounded(runs, concurrency, one)
        return watch.seconds

    with tempfile.TemporaryDirectory(dir=spec.get("dir")) as tmp:
        _, result["settings"] = launch(Path(tmp), spec)
        try:
            result["seconds"] = asyncio.run(measure())
        finally:
            DBOS.destroy()
            drop_postgres()
    return result


def suspend_resume(spec: dict[str, Any]) -> dict[str, Any]:
    resumes = int(spec["resumes"])
    settle = float(spec.get("settle_seconds", 0.01))
    latencies: list[float] = []

    async def cycle(record: bool) -> None:
        global _reached
        _reached = asyncio.Event()
        handle = await DBOS.start_workflow_async(suspending_workflow)
        await _reached.wait()
        # Let the workflow reach recv (its first step has completed): if it had not yet, the
        # message would be found at once, which could only shorten the measured latency.
        await asyncio.sleep(settle)
        with common.Stopwatch() as watch:
            await DBOS.send_async(handle.get_workflow_id(), common.RESUME_EVENT, TOPIC)
            event = await handle.get_result()
        if event != common.RESUME_EVENT:
            raise RuntimeError(f"workflow returned {event!r}")
        if record:
            latencies.append(watch.seconds * 1000)

    async def measure() -> None:
        await cycle(record=False)  # warm-up
        for _ in range(resumes):
            await cycle(record=True)

    with tempfile.TemporaryDirectory(dir=spec.get("dir")) as tmp:
        _, settings = launch(Path(tmp), spec)
        try:
            asyncio.run(measure())
        finally:
            DBOS.destroy()
            drop_postgres()
    return {
        "settings": settings,
        "latencies_ms": latencies,
        "p50_ms": common.percentile(latencies, 50),
        "p99_ms": common.percentile(latencies, 99),
    }


if __name__ == "__main__":
    common.main({"durable": durable, "suspend_resume": suspend_resume}, versions)
