"""Durable workflows per second and resume latency, with anchors measured in the same run.

    python benchmarks/durable_bench.py [--quick] [--dir DIR]

A durable run is a program of 3 no-op tool steps on an ExecutionVM whose journal is the
governance ledger (LedgerJournal: Ledger + RunStore in one SQLite file, WAL mode), with both
connections at synchronous=FULL, then NORMAL. Measured:

  runs/s, sequential       1,000 runs one after another (--quick: 100)
  runs/s, 100 concurrent   1,000 runs, 100 in flight (asyncio.gather over a semaphore)
  resume p50 / p99         N runs suspended first (a tool returning PENDING, then the same 3
                           steps), then each `vm.resume` timed until it returns SUCCESS
                           (N = 1,000; --quick: 100)

Anchors, measured in the same process on the same disk:

  in-memory VM   the same program, loop and concurrency on `ExecutionVM()` without a journal:
                 the kernel alone
  sqlite3        stdlib sqlite3 on a file with the same settings (WAL, same synchronous) and a
                 ledger-shaped table, one INSERT + COMMIT per step (3 per run): the floor of
                 writing every step durably

The table's "x" columns are costs relative to the anchor: time per run (or the latency) of the
durable VM divided by the anchor's; 1.0 would be free. A durable run commits 5 times
(run_started with its run-index row, 3 steps, run_finished with the run's final status);
concurrent runs share the ledger's commits (group commit; the mean batch is printed).

"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from governance.checkpoint import Signer
from governance.journal import LedgerJournal
from governance.ledger import Ledger
from governance.runs import RunStore
from governance.storage.ledger_port import Synchronous
from kernel import PENDING, ExecutionVM, Program, TraceStatus

ORIGIN = "bench.ledgerflow.example/durable"
STEPS = [{"id": f"s{n}", "type": "tool", "tool": "noop"} for n in range(3)]
PROGRAM = Program.from_dict({"name": "three-steps", "steps": STEPS})
GATED = Program.from_dict(
    {"name": "gated-three-steps", "steps": [{"id": "hold", "type": "tool", "tool": "hold"}, *STEPS]}
)
CONCURRENCY = 100
WARMUP = 20


def noop() -> None:
    return None


def hold() -> str:
    return PENDING


TOOLS = {"noop": noop, "hold": hold}


# -- what is measured -------------------------------------------------------------------------


class Durable:
    """A ledger and run index over a new file, and a VM journaling to them."""

    def __init__(self, path: Path, synchronous: Synchronous) -> None:
        self.path, self.synchronous = path, synchronous

    async def __aenter__(self) -> ExecutionVM:
        signer = Signer.generate("bench")
        self.ledger = await Ledger.open_at(
            self.path, signer=signer, origin=ORIGIN, synchronous=self.synchronous
        )
        runs = await RunStore.in_file(self.path, synchronous=self.synchronous).open()
        self.journal = LedgerJournal(self.ledger, runs)
        return ExecutionVM(tools=TOOLS, journal=self.journal)

    async def __aexit__(self, *exc_info: object) -> None:
        await self.journal.close()
        await self.ledger.close()


async def runs_per_second(vm: ExecutionVM, count: int, concurrency: int) -> float:
    async def one() -> None:
        trace = await vm.run(PROGRAM)
        assert trace.status is TraceStatus.SUCCESS, trace.error

    for _ in range(WARMUP):
        await one()
    start = time.perf_counter()
    if concurrency == 1:
        for _ in range(count):
            await one()
    else:
        slots = asyncio.Semaphore(concurrency)

        async def bounded() -> None:
            async with slots:
                await one()

        await asyncio.gather(*(bounded() for _ in range(count)))
    return count / (time.perf_counter() - start)


async def resume_latencies(vm: ExecutionVM, count: int) -> list[float]:
    """Seconds from `vm.resume` to its SUCCESS trace, for each of `count` suspended runs."""
    suspended = []
    for _ in range(count + WARMUP):
        trace = await vm.run(GATED)
        assert trace.status is TraceStatus.SUSPENDED
        suspended.append(trace.trace_id)
    latencies = []
    for number, trace_id in enumerate(suspended):
        start = time.perf_counter()
        trace = await vm.resume(trace_id, {"ok": True})
        elapsed = time.perf_counter() - start
        assert trace.status is TraceStatus.SUCCESS, trace.error
        if number >= WARMUP:
            latencies.append(elapsed)
    return latencies


# -- anchors ----------------------------------------------------------------------------------

_ANCHOR_SCHEMA = (
    "CREATE TABLE envelopes (seq INTEGER PRIMARY KEY, execution_id TEXT NOT NULL, step_id TEXT,"
    " kind TEXT NOT NULL, status TEXT, policy_hash TEXT NOT NULL, canonical_snapshot_hash TEXT,"
    " payload TEXT NOT NULL, recorded_at INTEGER NOT NULL, prev_hash BLOB NOT NULL,"
    " entry_hash BLOB NOT NULL) STRICT",
    "CREATE INDEX by_execution ON envelopes (execution_id, seq)",
    "CREATE INDEX by_time ON envelopes (recorded_at)",
    "CREATE INDEX by_policy ON envelopes (policy_hash, seq)",
    "CREATE INDEX by_kind ON envelopes (kind, seq)",
)
_PAYLOAD = '{"attempts":1,"error":null,"output":null,"type":"tool"}'


def sqlite_step_commits(path: Path, synchronous: str, runs: int) -> list[float]:
    """Seconds per run of 3 steps, each step one INSERT + COMMIT, with stdlib sqlite3."""
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute(f"PRAGMA synchronous={synchronous}")
        for statement in _ANCHOR_SCHEMA:
            connection.execute(statement)
        seq, durations = 0, []
        for run in range(runs + WARMUP):
            start = time.perf_counter()
            for step in range(3):
                connection.execute("BEGIN")
                connection.execute(
                    "INSERT INTO envelopes VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                    (
                        seq,
                        f"run-{run}",
                        f"s{step}",
                        "step",
                        "SUCCESS",
                        "ab" * 32,
                        "cd" * 32,
                        _PAYLOAD,
                        time.time_ns() // 1000,
                        os.urandom(32),
                        os.urandom(32),
                    ),
                )
                connection.execute("COMMIT")
                seq += 1
            if run >= WARMUP:
                durations.append(time.perf_counter() - start)
        return durations
    finally:
        connection.close()


# -- the table --------------------------------------------------------------------------------

Row = tuple[str, float, str, float | None, float | None]
rows: list[Row] = []
notes: list[str] = []


def add_rate(measure: str, value: float, memory: float, raw: float | None) -> None:
    """A runs/s row; costs are anchor rate / value (time per run relative to the anchor)."""
    rows.append((measure, value, "runs/s", memory, raw))


def add_latency(measure: str, value: float, memory: float, raw: float) -> None:
    rows.append((measure, value * 1000, "ms", memory * 1000, raw * 1000))


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def print_table() -> None:
    def number(value: float | None) -> str:
        if value is None:
            return ""
        return f"{value:,.0f}" if value >= 100 else f"{value:,.3f}" if value < 1 else f"{value:.2f}"

    def cost(measure: Row, anchor: float | None) -> str:
        if anchor is None:
            return ""
        value = measure[1]
        ratio = anchor / value if measure[2] == "runs/s" else value / anchor
        return f"{ratio:.1f}"

    header = ("measure", "value", "unit", "in-memory VM", "x", "sqlite3 commit/step", "x")
    lines: list[tuple[str, ...]] = [header]
    for row in rows:
        measure, value, unit, memory, raw = row
        lines.append(
            (measure, number(value), unit, number(memory), cost(row, memory), number(raw),
             cost(row, raw))
        )  # fmt: skip
    widths = [max(len(line[column]) for line in lines) for column in range(len(header))]
    left: Callable[[str, int], str] = str.ljust
    right: Callable[[str, int], str] = str.rjust
    aligns = [left, right, left, right, right, right, right]
    for position, line in enumerate(lines):
        print("  ".join(a(cell, w) for cell, w, a in zip(line, widths, aligns, strict=True)))
        if position == 0:
            print("  ".join("-" * width for width in widths))
    print("\nx: cost relative to the anchor (time per run, or latency, divided by the anchor's)")
    for note in notes:
        print(note)
    print(f"os.cpu_count()={os.cpu_count()}; SQLite {sqlite3.sqlite_version}")


async def measure(directory: Path, sequential: int, concurrent: int, resumes: int) -> None:
    memory_sequential = await runs_per_second(ExecutionVM(tools=TOOLS), sequential, 1)
    memory_concurrent = await runs_per_second(ExecutionVM(tools=TOOLS), concurrent, CONCURRENCY)
    memory_latency = await resume_latencies(ExecutionVM(tools=TOOLS), resumes)
    memory_p50, memory_p99 = percentile(memory_latency, 0.5), percentile(memory_latency, 0.99)
    for synchronous in ("FULL", "NORMAL"):
        tag = f"{synchronous:<6}"
        raw = sqlite_step_commits(directory / f"anchor-{synchronous}.db", synchronous, sequential)
        raw_rate = len(raw) / sum(raw)

        async with Durable(directory / f"seq-{synchronous}.db", synchronous) as vm:
            value = await runs_per_second(vm, sequential, 1)
        add_rate(f"{tag} runs/s, sequential ({sequential:,})", value, memory_sequential, raw_rate)

        durable = Durable(directory / f"conc-{synchronous}.db", synchronous)
        async with durable as vm:
            value = await runs_per_second(vm, concurrent, CONCURRENCY)
            stats = durable.ledger.stats
        add_rate(
            f"{tag} runs/s, {CONCURRENCY} concurrent ({concurrent:,})",
            value,
            memory_concurrent,
            raw_rate,
        )
        notes.append(
            f"{synchronous} {CONCURRENCY} concurrent: {stats.envelopes:,} envelopes in "
            f"{stats.commits:,} ledger commits (mean batch {stats.mean_batch:.1f}, max "
            f"{stats.max_batch})"
        )

        async with Durable(directory / f"resume-{synchronous}.db", synchronous) as vm:
            latency = await resume_latencies(vm, resumes)
        for name, fraction, memory in (("p50", 0.5, memory_p50), ("p99", 0.99, memory_p99)):
            add_latency(
                f"{tag} resume to SUCCESS {name} ({resumes:,})",
                percentile(latency, fraction),
                memory,
                percentile(raw, fraction),
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller counts, a few seconds")
    parser.add_argument("--dir", help="where to put the database files (default: a temp dir)")
    options = parser.parse_args()
    sequential, concurrent, resumes = (100, 1000, 100) if options.quick else (1000, 1000, 1000)

    def run(directory: str) -> None:
        asyncio.run(measure(Path(directory), sequential, concurrent, resumes))

    started = time.perf_counter()
    if options.dir:
        Path(options.dir).mkdir(parents=True, exist_ok=True)
        run(tempfile.mkdtemp(dir=options.dir))
    else:
        with tempfile.TemporaryDirectory() as directory:
            run(directory)
    print_table()
    print(f"measured in {time.perf_counter() - started:.1f}s")


if __name__ == "__main__":
    main()
