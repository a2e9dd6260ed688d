"""Child process of the durable-execution tests (run by tests/durable, not collected by pytest).

    python worker.py run  --db D --key K --effects F --gen G [--runs N] [--concurrency C]
                          [--sync FULL|NORMAL] [--gated] [--crash-after LABEL]
    python worker.py race --db D --key K --effects F --name NAME

`run` is one incarnation of a durable service: it opens the ledger, the run index and an
ExecutionVM over them, finishes whatever an earlier incarnation left (`vm.recover()`, then, with
--gated, resumes the suspended runs), and starts every run `run-0000` ... not yet in the run
index, C at a time (a kill between deciding to start a run and `run_started` leaves no row, so
the run is started by a later incarnation, never twice). Its tools are external effects: each
appends `trace_id step_id idempotency_key g<gen>` to the effects file (open, append, fsync) and
returns the idempotency key and who ran it, which the ledger then records.

Everything durable it does is reported on stdout, one flushed line per event, written after the
event completed:

    open | ready (recovery finished) | done (every run finished) | sync <ledger> <run index>
    ev <label> <trace id> [<seq> <entry hash>]

with labels `start` (about to call vm.run), `index:started`, `index:<STATUS>`, `claim`,
`effect:<step>` and `append:<envelope kind>:<step or ->` (acknowledged: its commit returned).
`--crash-after LABEL` SIGKILLs the process right after the first event with that label.

`race` serves resumes: it prints `ready`, then for each `resume <trace id>` line on stdin calls
`vm.resume` and prints `won <final status>`, `lost` (ResumeError) or `error <exception>`, until
`quit` or end of input.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import signal
import sys
from collections.abc import Callable
from typing import IO, Any

from governance.checkpoint import Signer
from governance.envelope import GovernanceEnvelope
from governance.journal import LedgerJournal
from governance.ledger import Ledger
from governance.runs import RunStore
from governance.storage.ledger_port import Synchronous
from kernel import PENDING, ExecutionVM, Program, ResumeError, TraceStatus
from kernel.tools import Tool, ToolContext

ORIGIN = "ledgerflow.test/durable"
APPROVAL = {"approved": True}

# 5 tool executions per run: prepare, ship_a and ship_b (a parallel block), even or odd (chosen by
# a condition), finish. The records: prepare, ship_a, ship_b, fan, route, even|odd, finish.
TORTURE_PROGRAM: dict[str, Any] = {
    "name": "torture",
    "steps": [
        {"id": "prepare", "type": "tool", "tool": "effect", "args": {"n": "$n"}},
        {
            "id": "fan",
            "type": "parallel",
            "parallel_steps": [
                {"id": "ship_a", "type": "tool", "tool": "effect", "args": {"n": "$n"}},
                {"id": "ship_b", "type": "tool", "tool": "effect", "args": {"n": "$n"}},
            ],
        },
        {
            "id": "route",
            "type": "condition",
            "condition": "$prepare.output.even",
            "then": "even",
            "otherwise": "odd",
        },
        {
            "id": "even",
            "type": "tool",
            "tool": "effect",
            "args": {"n": "$n"},
            "next_step": "finish",
        },
        {"id": "odd", "type": "tool", "tool": "effect", "args": {"n": "$n"}, "next_step": "finish"},
        {"id": "finish", "type": "tool", "tool": "effect", "args": {"n": "$n"}},
    ],
}

# The same with an approval gate before `finish`: the gate's tool suspends the run, and the
# worker resumes it with APPROVAL.
GATED_PROGRAM: dict[str, Any] = {
    "name": "torture-gated",
    "steps": [
        *TORTURE_PROGRAM["steps"][:3],
        {"id": "even", "type": "tool", "tool": "effect", "args": {"n": "$n"}, "next_step": "gate"},
        {"id": "odd", "type": "tool", "tool": "effect", "args": {"n": "$n"}, "next_step": "gate"},
        {"id": "gate", "type": "tool", "tool": "gate", "next_step": "finish"},
        TORTURE_PROGRAM["steps"][-1],
    ],
}

# Resume races: `hold` suspends (the parent runs it), `after` is the effect after the resume.
RACE_PROGRAM: dict[str, Any] = {
    "name": "race",
    "steps": [
        {"id": "hold", "type": "tool", "tool": "hold"},
        {"id": "after", "type": "tool", "tool": "after"},
    ],
}


def trace_id(number: int) -> str:
    return f"run-{number:04d}"


def append_line(path: str, line: str) -> None:
    """Append one line the way an external effect would: open, one write, fsync, close."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
        os.fsync(fd)
    finally:
        os.close(fd)


class Probe:
    """Reports durable events on `out` and kills the process after the one named `crash_after`."""

    def __init__(self, out: IO[str], crash_after: str | None = None) -> None:
        self.out = out
        self.crash_after = crash_after

    def say(self, line: str) -> None:
        self.out.write(line + "\n")
        self.out.flush()

    def __call__(self, label: str, trace: str, extra: str = "") -> None:
        self.say(f"ev {label} {trace} {extra}".rstrip())
        if label == self.crash_after:
            os.kill(os.getpid(), signal.SIGKILL)


class Effects:
    """The tools: each execution appends `trace step key tag` to the effects file."""

    def __init__(self, path: str, tag: str, probe: Probe | None = None) -> None:
        self.path = path
        self.tag = tag
        self.probe = probe

    def _record(self, ctx: ToolContext) -> None:
        append_line(self.path, f"{ctx.trace_id} {ctx.step_id} {ctx.idempotency_key} {self.tag}\n")
        if self.probe is not None:
            self.probe(f"effect:{ctx.step_id}", ctx.trace_id)

    def effect(self, n: int, ctx: ToolContext) -> dict[str, Any]:
        self._record(ctx)
        return {"n": n, "even": n % 2 == 0, "key": ctx.idempotency_key, "by": self.tag}

    def gate(self, ctx: ToolContext) -> str:
        self._record(ctx)
        return PENDING

    def after(self, ctx: ToolContext) -> dict[str, Any]:
        self._record(ctx)
        return {"key": ctx.idempotency_key, "by": self.tag}

    def tools(self) -> dict[str, Tool]:
        return {"effect": self.effect, "gate": self.gate, "after": self.after, "hold": hold}


def hold() -> str:
    return PENDING


async def open_journal(
    db: str,
    signer: Signer,
    synchronous: Synchronous = "FULL",
    *,
    checkpoint_every: int = 1000,
    checkpoint_on_close: bool = True,
) -> LedgerJournal:
    """Ledger and run index over one file, both connections at `synchronous`."""
    ledger = await Ledger.open_at(
        db,
        signer=signer,
        origin=ORIGIN,
        synchronous=synchronous,
        checkpoint_every=checkpoint_every,
        checkpoint_on_close=checkpoint_on_close,
    )
    runs = RunStore.in_file(db, synchronous=synchronous)
    try:
        await runs.open()
    except BaseException:
        await ledger.close()
        raise
    return LedgerJournal(ledger, runs)


async def close_journal(journal: LedgerJournal) -> None:
    try:
        await journal.close()
    finally:
        await journal.ledger.close()


def index_writes(statements: Any) -> list[tuple[str, str]]:
    """(probe label, trace id) of the run index writes among `statements`."""
    found = []
    for sql, params in statements:
        if sql.startswith("INSERT INTO lf_runs"):
            found.append(("index:started", params[0]))
        elif sql.startswith("UPDATE lf_runs SET status"):
            found.append((f"index:{params[0]}", params[-1]))
    return found


def instrument_ledger(ledger: Ledger, probe: Probe) -> None:
    """Report every envelope appended, once its commit returned (acknowledged)."""
    append = ledger.append

    async def traced_append(execution_id: str, kind: Any, *args: Any, **kw: Any) -> Any:
        riders = ledger.riding  # exactly the ones this append carries (it takes them at once)
        envelope: GovernanceEnvelope = await append(execution_id, kind, *args, **kw)
        carried = await ledger.store.read_range(envelope.seq - riders, envelope.seq)
        for rider in (*carried, envelope):  # the riders were committed with it, just before
            label = f"append:{rider.kind.value}:{rider.step_id or '-'}"
            probe(label, rider.execution_id, f"{rider.seq} {rider.entry_hash}")
        # Run index rows that rode in the same commit are durable now too.
        for label, trace in index_writes(kw.get("also", ())):
            probe(label, trace)
        return envelope

    ledger.append = traced_append  # type: ignore[method-assign]


def instrument_runs(runs: RunStore, probe: Probe) -> None:
    """Report every write to the run index, once it returned."""
    write, claim = runs.write, runs.claim

    async def traced_write(statements: list[Any]) -> None:
        await write(statements)
        for label, trace in index_writes(statements):
            probe(label, trace)

    async def traced_claim(trace: str, *args: Any, **kw: Any) -> bool:
        won = await claim(trace, *args, **kw)
        if won:
            probe("claim", trace)
        return won

    runs.write = traced_write  # type: ignore[method-assign]
    runs.claim = traced_claim  # type: ignore[method-assign, assignment]


async def pragma_synchronous(journal: LedgerJournal) -> tuple[int, int]:
    """PRAGMA synchronous of the ledger's writer connection and of the run index's connection
    (2 = FULL, 1 = NORMAL): what the database really runs with."""
    [(ledger_level,)] = await journal.ledger.store._writer.fetch("PRAGMA synchronous")  # type: ignore[attr-defined]
    [(index_level,)] = await journal.runs.db.fetch("PRAGMA synchronous")
    values = [int(ledger_level), int(index_level)]
    return values[0], values[1]


async def run_incarnation(options: argparse.Namespace, out: IO[str]) -> None:
    probe = Probe(out, options.crash_after)
    signer = Signer.from_text(options.key)
    journal = await open_journal(
        options.db, signer, options.sync, checkpoint_every=options.checkpoint_every
    )
    # One run-index connection per concurrent runner, all over the process's one Ledger: one
    # RunStore connection cannot serve concurrent runs (test_concurrent_runs_on_one_journal in
    # test_resume_race.py).
    lanes = [
        LedgerJournal(journal.ledger, RunStore.in_file(options.db, synchronous=options.sync))
        for _ in range(options.concurrency)
    ]
    try:
        for lane in lanes:
            await lane.runs.open()
        instrument_ledger(journal.ledger, probe)
        for runs in [journal.runs, *(lane.runs for lane in lanes)]:
            instrument_runs(runs, probe)
        tools = Effects(options.effects, f"g{options.gen}", probe).tools()
        vm = ExecutionVM(tools=tools, journal=journal)
        program = Program.from_dict(GATED_PROGRAM if options.gated else TORTURE_PROGRAM)
        ledger_sync, index_sync = await pragma_synchronous(journal)
        probe.say("open")
        probe.say(f"sync {ledger_sync} {index_sync}")

        def check(trace: Any) -> None:
            allowed = {TraceStatus.SUCCESS, TraceStatus.SUSPENDED}
            if trace.status not in allowed:
                raise RuntimeError(f"{trace.trace_id} ended {trace.status}: {trace.error}")

        for trace in await vm.recover():
            check(trace)
        if options.gated:
            for row in await journal.runs.with_status(TraceStatus.SUSPENDED.value):
                check(await vm.resume(row.trace_id, APPROVAL))
        probe.say("ready")

        pending: collections.deque[tuple[int, str]] = collections.deque()
        for number in range(options.runs):
            if await journal.runs.get(trace_id(number)) is None:
                pending.append((number, trace_id(number)))

        async def runner(lane: LedgerJournal) -> None:
            lane_vm = ExecutionVM(tools=tools, journal=lane)
            while pending:
                number, trace = pending.popleft()
                probe("start", trace)
                result = await lane_vm.run(program, {"n": number}, trace_id=trace)
                if result.status is TraceStatus.SUSPENDED:
                    result = await lane_vm.resume(trace, APPROVAL)
                check(result)

        await asyncio.gather(*(runner(lane) for lane in lanes))
        probe.say("done")
    finally:
        for lane in lanes:
            await lane.runs.close()
        await close_journal(journal)


async def race(options: argparse.Namespace, out: IO[str]) -> None:
    probe = Probe(out)
    journal = await open_journal(options.db, Signer.from_text(options.key))
    try:
        vm = ExecutionVM(tools=Effects(options.effects, options.name).tools(), journal=journal)
        probe.say("ready")
        while True:
            line = await asyncio.to_thread(sys.stdin.readline)
            command, _, argument = line.strip().partition(" ")
            if command != "resume":
                break
            try:
                trace = await vm.resume(argument, {"by": options.name})
            except ResumeError:
                probe.say("lost")
            except Exception as exc:
                probe.say(f"error {exc!r}".replace("\n", " "))
            else:
                probe.say(f"won {trace.status.value}")
    finally:
        await close_journal(journal)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run")
    run.add_argument("--db", required=True)
    run.add_argument("--key", required=True)
    run.add_argument("--effects", required=True)
    run.add_argument("--gen", type=int, required=True)
    run.add_argument("--runs", type=int, default=1)
    run.add_argument("--concurrency", type=int, default=1)
    run.add_argument("--sync", choices=["FULL", "NORMAL"], default="FULL")
    run.add_argument("--gated", action="store_true")
    run.add_argument("--checkpoint-every", type=int, default=20)
    run.add_argument("--crash-after")
    serve = commands.add_parser("race")
    serve.add_argument("--db", required=True)
    serve.add_argument("--key", required=True)
    serve.add_argument("--effects", required=True)
    serve.add_argument("--name", required=True)
    return parser.parse_args(argv)


def main(argv: list[str]) -> None:
    options = parse(argv)
    entry: Callable[[argparse.Namespace, IO[str]], Any]
    entry = run_incarnation if options.command == "run" else race
    asyncio.run(entry(options, sys.stdout))


if __name__ == "__main__":
    main(sys.argv[1:])
