"""The ledgerflow side of the comparative benchmark: one repetition of one workload per process.

    python benchmarks/ledgerflow_runner.py '{"workload": "kernel", "runs": 1000, ...}'

Run by benchmarks/run.py with the harness's own interpreter (ledgerflow's virtualenv); prints
`BENCH_RESULT {json}`. Program shapes, tool bodies and the concurrency driver come from
benchmarks/anchors/bench_common.py, shared with the anchors.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE / "anchors"), str(HERE), str(HERE.parent)]

import bench_common as common  # noqa: E402

from kernel import ExecutionVM, Program, TraceStatus  # noqa: E402

if TYPE_CHECKING:
    from governance.journal import LedgerJournal

ORIGIN = "bench.ledgerflow.example/log"


def versions() -> dict[str, str]:
    found = {}
    for name in ("ledgerflow", "pydantic", "rfc8785", "cryptography"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def pending() -> str:
    return "PENDING"


TOOLS = {"noop": common.noop, "pending": pending}


# -- 1. kernel in memory -----------------------------------------------------------------------


def kernel(spec: dict[str, Any]) -> dict[str, Any]:
    runs, concurrency = int(spec["runs"]), int(spec["concurrency"])
    program = Program.from_dict(common.kernel_program())
    vm = ExecutionVM(tools=TOOLS)
    context = common.KERNEL_CONTEXT
    bad: list[str] = []

    async def one(_: int) -> None:
        trace = await vm.run(program, context)
        if trace.status is not TraceStatus.SUCCESS or len(trace.steps) != common.KERNEL_STEPS:
            bad.append(f"{trace.status.value} after {len(trace.steps)} steps")

    async def measure() -> float:
        # Warm-up, as for every system: one batch through the same driver (the program is
        # hashed and validated on the first run).
        await common.run_bounded(min(concurrency, runs), concurrency, one)
        with common.Stopwatch() as watch:
            await common.run_bounded(runs, concurrency, one)
        return watch.seconds

    seconds = asyncio.run(measure())
    if bad:
        raise RuntimeError(f"{len(bad)} runs did not execute 5 steps: {bad[0]}")
    return {"seconds": seconds, "runs": runs, "steps_per_run": common.KERNEL_STEPS}


# -- 2. long horizon ---------------------------------------------------------------------------


def long_horizon(spec: dict[str, Any]) -> dict[str, Any]:
    steps = int(spec["steps"])
    rss_before = common.peak_rss_kib()
    data = common.linear_program(steps)
    vm = ExecutionVM(tools=TOOLS)
    with common.Stopwatch() as load:
        program = Program.from_dict(data)
    with common.Stopwatch() as run:
        trace = asyncio.run(vm.run(program))
    if trace.status is not TraceStatus.SUCCESS or len(trace.steps) != steps:
        raise RuntimeError(f"{trace.status.value} after {len(trace.steps)} of {steps} steps")
    return {
        "load_seconds": load.seconds,
        "run_seconds": run.seconds,
        "seconds": load.seconds + run.seconds,
        "steps": steps,
        "rss_before_kib": rss_before,
        "rss_kib": common.peak_rss_kib(),
    }


# -- 3, 4, 5. durable, on the SQLite ledger ----------------------------------------------------


async def open_vm(path: Path | str, synchronous: str) -> tuple[ExecutionVM, LedgerJournal]:
    # Imported here, not at the top: the in-memory workloads (1, 2) load the kernel only, so
    # their peak RSS does not include the governance packages (cryptography, sqlite3).
    from governance.checkpoint import Signer
    from governance.journal import LedgerJournal
    from governance.ledger import Ledger

    ledger = await Ledger.open_at(
        path,
        signer=Signer.generate("bench-key"),
        origin=ORIGIN,
        synchronous=synchronous,  # type: ignore[arg-type]
    )
    journal = await LedgerJournal.open(ledger, path)
    return ExecutionVM(tools=TOOLS, journal=journal), journal


async def close_vm(journal: LedgerJournal) -> None:
    try:
        await journal.close()
    finally:
        await journal.ledger.close()


async def settings(where: Path | str, synchronous: str, journal: LedgerJournal) -> dict[str, str]:
    if isinstance(where, str):
        import postgres_runs

        return await postgres_runs.server_settings(where)
    mode = common.file_journal_mode(str(where))
    return {
        "ledger": f"journal_mode={mode}, synchronous={synchronous} (Ledger.open)",
        "run index": f"same file, synchronous={journal.runs.synchronous} (RunStore default)",
    }


@contextlib.contextmanager
def ledger_database(spec: dict[str, Any]) -> Iterator[Path | str]:
    """A new ledger for one repetition: a SQLite file, or a PostgreSQL schema (`backend`)."""
    if spec.get("backend") == "postgresql":
        import postgres_runs

        with postgres_runs.schema() as url:
            yield url
        return
    with tempfile.TemporaryDirectory(dir=spec.get("dir")) as tmp:
        yield Path(tmp) / "ledger.db"


def durable(spec: dict[str, Any]) -> dict[str, Any]:
    if spec.get("floor"):  # the machine's limit, benchmarks/floors.py
        import floors

        return floors.durable(spec)
    runs, concurrency = int(spec["runs"]), int(spec["concurrency"])
    synchronous = spec.get("synchronous", "FULL")
    program = Program.from_dict(common.durable_program())
    result: dict[str, Any] = {"runs": runs, "steps_per_run": common.DURABLE_STEPS}
    count = int(spec.get("instances", 1))

    async def measure(where: Path | str) -> float:
        vm, journal = await open_vm(where, synchronous)
        bad: list[str] = []

        async def one(_: int) -> None:
            trace = await vm.run(program)
            if trace.status is not TraceStatus.SUCCESS:
                bad.append(f"{trace.status.value}: {trace.error}")

        try:
            await one(-1)  # warm-up
            with common.Stopwatch() as watch:
                await common.run_bounded(runs, concurrency, one)
            result["mean_envelopes_per_commit"] = journal.ledger.stats.mean_batch
        finally:
            await close_vm(journal)
        if bad:
            raise RuntimeError(f"{len(bad)} runs failed: {bad[0]}")
        result["settings"] = await settings(where, synchronous, journal)
        return watch.seconds

    with ledger_database(spec) as where:
        if count == 1:
            result["seconds"] = asyncio.run(measure(where))
        else:
            import postgres_runs

            assert isinstance(where, str), "several instances share a PostgreSQL database"
            result["seconds"] = postgres_runs.instances(spec, where, count)
            result["settings"] = asyncio.run(postgres_runs.server_settings(where))
            result["settings"]["instances"] = f"{count} processes, one pool and Ledger each"
    return result


def durable_instance(spec: dict[str, Any]) -> dict[str, Any]:
    """One instance of a multi-instance repetition (started by postgres_runs.instances)."""
    runs, concurrency = int(spec["runs"]), int(spec["concurrency"])
    program = Program.from_dict(common.durable_program())

    async def measure() -> dict[str, Any]:
        vm, journal = await open_vm(spec["url"], "FULL")
        try:
            await vm.run(program)  # warm-up
            print("ready", flush=True)
            await asyncio.to_thread(sys.stdin.readline)  # all instances start together
            start = time.time()

            async def one(_: int) -> None:
                trace = await vm.run(program)
                if trace.status is not TraceStatus.SUCCESS:
                    raise RuntimeError(f"{trace.status.value}: {trace.error}")

            await common.run_bounded(runs, concurrency, one)
            return {"start": start, "end": time.time()}
        finally:
            await close_vm(journal)

    return asyncio.run(measure())


def suspend_resume(spec: dict[str, Any]) -> dict[str, Any]:
    """`through: "another"`: each run is suspended by one instance (its own Ledger and pool)
    and resumed through a second one over the same database, as behind a load balancer."""
    resumes = int(spec["resumes"])
    program = Program.from_dict(common.suspend_program())
    latencies: list[float] = []
    result: dict[str, Any] = {}

    async def cycle(starter: ExecutionVM, resumer: ExecutionVM, record: bool) -> None:
        trace = await starter.run(program)
        if trace.status is not TraceStatus.SUSPENDED:
            raise RuntimeError(f"run ended {trace.status.value}, not SUSPENDED: {trace.error}")
        with common.Stopwatch() as watch:
            done = await resumer.resume(trace.trace_id, common.RESUME_EVENT)
        if done.status is not TraceStatus.SUCCESS:
            raise RuntimeError(f"resumed run ended {done.status.value}: {done.error}")
        if record:
            latencies.append(watch.seconds * 1000)

    async def measure(where: Path | str) -> None:
        starter, journal = await open_vm(where, "FULL")
        resumer, other = starter, None
        if spec.get("through") == "another":
            resumer, other = await open_vm(where, "FULL")
        try:
            await cycle(starter, resumer, record=False)  # warm-up
            for _ in range(resumes):
                await cycle(starter, resumer, record=True)
        finally:
            await close_vm(journal)
            if other is not None:
                await close_vm(other)
        result["settings"] = await settings(where, "FULL", journal)

    with ledger_database(spec) as where:
        asyncio.run(measure(where))
    result.update(
        latencies_ms=latencies,
        p50_ms=common.percentile(latencies, 50),
        p99_ms=common.percentile(latencies, 99),
    )
    return result


# -- 6. MCP round trip: the mcp 2.x client against `ledgerflow serve` ----------------------------

# Condition steps only, executed check -> yes -> done (3 steps); the run ends after the last step.
# nano-vm-mcp's equivalent (benchmarks/anchors/nano_vm_mcp_anchor.py) halts with is_terminal,
# which ledgerflow rejects on conditions. The condition is on literals: nano-vm-mcp's
# run_program takes no context.
MCP_PROGRAM: dict[str, Any] = {
    "name": "mcp_branch",
    "steps": [
        {
            "id": "check",
            "type": "condition",
            "condition": "1 == 1",
            "then": "yes",
            "otherwise": "no",
        },
        {"id": "no", "type": "condition", "condition": "1 == 2", "otherwise": "check"},
        {"id": "yes", "type": "condition", "condition": "2 > 1", "then": "done", "otherwise": "no"},
        {"id": "done", "type": "condition", "condition": "3 >= 3", "otherwise": "check"},
    ],
    "max_steps": 10,
}
MCP_STEPS = 3


def server_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGERFLOW_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE.parent), env.get("PYTHONPATH")]))
    return env


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "gateway.cli", *args]


async def mcp_drive(client: Any, calls: int, warmup: int) -> dict[str, Any]:
    async def call() -> float:
        with common.Stopwatch() as watch:
            result = await client.call_tool("run_program", {"program": MCP_PROGRAM})
        answer = result.structured_content
        if result.is_error or answer is None or answer.get("status") != "SUCCESS":
            raise RuntimeError(f"run_program answered {answer or result.content}")
        if len(answer.get("steps", ())) != MCP_STEPS:
            raise RuntimeError(f"run_program executed {answer.get('steps')}, not {MCP_STEPS} steps")
        return watch.seconds

    return await common.timed_calls(call, calls, warmup)


async def mcp_over_stdio(db: Path, calls: int, warmup: int, level: str) -> dict[str, Any]:
    from mcp import Client, StdioServerParameters

    serve = ("serve", "--transport", "stdio", "--synchronous", level.lower(), "--db", str(db))
    params = StdioServerParameters(
        command=sys.executable,
        args=cli(*serve)[1:],
        cwd=str(HERE.parent),
        env=server_env(),
    )
    async with Client(params) as client:
        return await mcp_drive(client, calls, warmup)


def start_http_server(db: Path, level: str) -> tuple[subprocess.Popen[bytes], str, str]:
    """`ledgerflow token create`, then `ledgerflow serve --transport http` on a free loopback
    port, ready; (process, url, token)."""
    created = subprocess.run(
        cli("token", "create", "--name", "bench", "--scopes", "run", "--db", str(db)),
        capture_output=True,
        text=True,
        cwd=HERE.parent,
        env=server_env(),
        timeout=60,
        check=True,
    )
    token = created.stdout.strip().splitlines()[0]
    port = common.free_port()
    command = cli("serve", "--transport", "http", "--host", "127.0.0.1", "--port", str(port))
    command += ["--synchronous", level.lower()]
    process = subprocess.Popen(
        [*command, "--db", str(db)],
        cwd=HERE.parent,
        env=server_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        common.wait_http_ok(f"http://127.0.0.1:{port}/readyz", process, "ledgerflow serve")
    except BaseException:
        common.stop(process)
        raise
    return process, f"http://127.0.0.1:{port}/mcp", token


async def mcp_over_http(url: str, token: str, calls: int, warmup: int) -> dict[str, Any]:
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared._httpx_utils import create_mcp_http_client

    headers = {"Authorization": f"Bearer {token}"}
    async with (
        create_mcp_http_client(headers=headers) as http,
        Client(streamable_http_client(url, http_client=http)) as client,
    ):
        return await mcp_drive(client, calls, warmup)


def mcp_round_trip(spec: dict[str, Any]) -> dict[str, Any]:
    if spec.get("floor"):
        import floors

        return floors.mcp_round_trip(spec)
    calls, warmup, transport = int(spec["calls"]), int(spec["warmup"]), spec["transport"]
    level = spec.get("synchronous", "FULL")
    with tempfile.TemporaryDirectory(dir=spec.get("dir")) as tmp:
        db = Path(tmp) / "ledger.db"
        if transport == "stdio":
            result = asyncio.run(mcp_over_stdio(db, calls, warmup, level))
            where = "stdio (the client starts `ledgerflow serve --transport stdio`)"
        else:
            process, url, token = start_http_server(db, level)
            try:
                result = asyncio.run(mcp_over_http(url, token, calls, warmup))
            finally:
                common.stop(process)
            where = "Streamable HTTP on a loopback port, bearer token (`ledgerflow token create`)"
        mode = common.file_journal_mode(str(db))
    result["steps_per_run"] = MCP_STEPS
    result["settings"] = {
        "transport": where,
        "ledger": f"journal_mode={mode}, "
        + (
            "synchronous=FULL (serve's default); per call: the run's envelopes and an access "
            "envelope, fsynced"
            if level == "FULL"
            else f"synchronous={level} (`serve --synchronous {level.lower()}`); per call: the "
            "run's envelopes and an access envelope, committed without fsync"
        ),
    }
    return result


# -- 7. ledger: benchmarks/ledger_bench.py's own measurements, reused -------------------------


def ledger(spec: dict[str, Any]) -> dict[str, Any]:
    import ledger_bench

    argv = ["ledger_bench.py", *(["--quick"] if spec.get("quick") else [])]
    if spec.get("dir"):
        argv += ["--dir", str(spec["dir"])]
    ledger_bench.rows.clear()
    saved, sys.argv = sys.argv, argv
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            ledger_bench.main()
    finally:
        sys.argv = saved
    rows = [
        {"measure": measure, "value": value, "anchor": anchor, "anchor_value": anchor_value}
        for measure, value, anchor, anchor_value in ledger_bench.rows
    ]
    return {"rows": rows, "sqlite": sqlite3.sqlite_version, "cpu_count": os.cpu_count()}


HANDLERS = {
    "kernel": kernel,
    "long_horizon": long_horizon,
    "durable": durable,
    "durable_instance": durable_instance,
    "suspend_resume": suspend_resume,
    "ledger": ledger,
    "mcp_round_trip": mcp_round_trip,
}


if __name__ == "__main__":
    common.main(HANDLERS, versions)
