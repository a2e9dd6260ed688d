"""Durable execution survives SIGKILL: the ledger is the journal, and a new process finishes the
work of the one that died, re-running only the step that was in flight, under the same key.

Two proofs:

- torture: a worker process runs many durable runs, 4 at a time, and is killed with SIGKILL at
  seeded random moments (LEDGERFLOW_TORTURE_KILLS times, 30 by default); each new incarnation
  recovers first. Afterwards every run is complete and SUCCESS, every step has exactly one
  record, every external effect happened once, or again only when a kill caught it in flight
  (each time under the same idempotency key, and the ledger kept the last execution's result),
  no run was started twice or lost, no acknowledged envelope was lost, and the ledger verifies
  with the signing key.
- crash points: the same program with an approval gate, killed right after each durable event of
  a run in turn (every point of the journaling order, which `test_journaling_order` pins down);
  a new process finishes the run and the outcome is checked exactly.

Whether the invariants hold never depends on where a kill lands: the kill timings only decide
which paths are exercised.
"""

from __future__ import annotations

import asyncio
import io
import os
import random
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from governance import verify_ledger_at
from governance.checkpoint import Signer
from governance.envelope import EnvelopeKind
from governance.journal import LedgerJournal
from kernel import ExecutionVM, ManualClock, Program, TraceStatus
from tests.durable import (
    Findings,
    WorkerProcess,
    acknowledged_envelopes,
    after_steps,
    check_runs,
    effect_steps,
    read_effects,
    read_ledger,
    recorded_by,
    run_args,
    seeded_signer,
)
from tests.durable.worker import (
    RACE_PROGRAM,
    close_journal,
    open_journal,
    parse,
    run_incarnation,
    trace_id,
)

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX SIGKILL")

SEED = 20_251_124
KILLS = int(os.environ.get("LEDGERFLOW_TORTURE_KILLS", "30"))
RUNS = max(60, 2 * KILLS)  # enough work that every kill lands on a busy worker
CONCURRENCY = 4


def test_sigkill_torture(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    signer = seeded_signer(rng)
    db, effects = tmp_path / "ledger.db", tmp_path / "effects.log"
    started = time.monotonic()

    def incarnation(gen: int) -> WorkerProcess:
        args = run_args(db, signer, effects, gen, runs=RUNS, concurrency=CONCURRENCY)
        return WorkerProcess(*args)

    unready: set[int] = set()  # incarnations killed before their recovery finished
    acknowledged: dict[int, str] = {}
    for gen in range(KILLS):
        worker = incarnation(gen)
        if rng.random() < 0.2:
            # Early: while it recovers what the last one left, or starts its first runs.
            worker.wait_for(lambda lines: "open" in lines)
            time.sleep(rng.uniform(0.0, 0.03))
        else:
            # After it has journaled a few steps, plus a little: in a tool, a commit, anywhere.
            worker.wait_for(after_steps(rng.randint(1, 10)))
            time.sleep(rng.uniform(0.0, 0.002))
        assert worker.kill(), f"incarnation {gen} ended before its kill: {worker.describe()}"
        assert "done" not in worker.lines, f"incarnation {gen} ran out of work: raise RUNS"
        if "ready" not in worker.lines:
            unready.add(gen)
        new = acknowledged_envelopes(worker.lines)
        assert all(acknowledged.get(seq, h) == h for seq, h in new.items()), "a seq was reused"
        acknowledged.update(new)

    final = incarnation(KILLS)
    assert final.finish() == 0, final.describe()
    assert "done" in final.lines
    acknowledged.update(acknowledged_envelopes(final.lines))
    findings, size = asyncio.run(_check_torture(db, signer, effects, unready, acknowledged))

    # One more incarnation finds nothing to do: no effect, no envelope.
    before = effects.read_bytes()
    again = incarnation(KILLS + 1)
    assert again.finish() == 0, again.describe()
    assert not any(line.startswith("ev ") for line in again.lines), again.lines
    assert effects.read_bytes() == before
    assert asyncio.run(read_ledger(db, signer)).size == size

    twice, thrice = findings.repeated(2), findings.repeated(3)
    print(
        f"\n{KILLS} kills ({len(unready)} before recovery finished), {RUNS} runs: "
        f"{len(twice)} effects twice, {len(thrice)} three times; runs without run_started: "
        f"{len(findings.missing_run_started)}, with 2 run_finished: "
        f"{len(findings.extra_run_finished)}; {time.monotonic() - started:.1f}s"
    )


async def _check_torture(
    db: Path, signer: Signer, effects_path: Path, unready: set[int], acknowledged: dict[int, str]
) -> tuple[Findings, int]:
    view = await read_ledger(db, signer)
    numbers = {trace_id(n): n for n in range(RUNS)}
    effects = read_effects(effects_path)
    findings = check_runs(view, effects, numbers, gated=False)
    for (tid, step), runs in findings.executions.items():
        gens = [int(effect.by[1:]) for effect in runs]
        # At most once per incarnation. The ledger kept the last execution's result: each
        # earlier one was cut off by its incarnation's kill before its record was committed
        # (nothing after it saw that result). The next incarnation's recovery runs such a step
        # again and records it before the worker says `ready`, so a step runs a third time only
        # if that recovery was itself killed: at most twice when no kill lands in a recovery.
        assert gens == sorted(set(gens)), (tid, step, gens)
        assert recorded_by(view, tid, step) == runs[-1].by, (tid, step, gens)
        assert all(gen in unready for gen in gens[1:-1]), (tid, step, gens, sorted(unready))

    # Nothing acknowledged was lost or changed, the chain and signed checkpoints verify.
    stored = {e.seq: e.entry_hash for es in view.envelopes.values() for e in es}
    lost = {seq for seq, h in acknowledged.items() if stored.get(seq) != h}
    assert not lost, f"acknowledged but lost or changed: {sorted(lost)[:10]}"
    report = await verify_ledger_at(db, [signer.verifier().to_text()])
    assert report.ok, report
    assert report.entries_checked == view.size
    assert report.checkpoints_checked > 0
    return findings, view.size


# -- crash points: a kill right after each durable event of a gated run ---------------------------

# The journaling order of one run of the gated program (n=0: the even branch), as the worker
# reports it. Each effect is followed by its record before the next step's effect: a step's
# record is durable before the next step runs.
JOURNALING_ORDER = [
    "start",
    "append:run_started:-",
    "index:started",  # committed with the envelope before it (one database)
    "effect:prepare",
    "append:step:prepare",
    "effect:ship_a",
    "effect:ship_b",
    "append:step:ship_a",
    "append:step:ship_b",
    "append:step:fan",
    "effect:even",
    "append:step:route",  # a condition's record rides in the commit of the next one
    "append:step:even",
    "effect:gate",
    "append:step:gate",
    "append:suspend:gate",
    "index:SUSPENDED",
    "claim",
    "append:resume:gate",
    "effect:finish",
    "append:step:finish",
    "append:run_finished:-",
    "index:SUCCESS",
]


async def _incarnation_in_process(db: Path, signer: Signer, effects: Path, gen: int) -> list[str]:
    """One incarnation in this process (no crash point): faster than a child for the checks."""
    out = io.StringIO()
    options = parse(run_args(db, signer, effects, gen, gated=True))
    await run_incarnation(options, out)
    return out.getvalue().splitlines()


async def test_journaling_order(tmp_path: Path) -> None:
    signer = seeded_signer(random.Random(SEED))
    lines = await _incarnation_in_process(tmp_path / "l.db", signer, tmp_path / "fx.log", 0)
    assert [line.split()[1] for line in lines if line.startswith("ev ")] == JOURNALING_ORDER
    assert lines[:2] == ["open", "sync 2 2"] and lines[-1] == "done"


# Durable only together with the envelope after it (the same commit): no crash point between.
RIDERS = {"append:step:route"}


@pytest.mark.parametrize(
    "crash_after",
    [label for label in JOURNALING_ORDER if label not in RIDERS],
)
async def test_kill_at_each_crash_point(tmp_path: Path, crash_after: str) -> None:
    signer = seeded_signer(random.Random(SEED))
    db, effects = tmp_path / "ledger.db", tmp_path / "effects.log"
    dead = WorkerProcess(*run_args(db, signer, effects, 0, gated=True, crash_after=crash_after))
    assert dead.finish() == -signal.SIGKILL, dead.describe()
    assert dead.lines[-1].split()[1] == crash_after
    acknowledged = acknowledged_envelopes(dead.lines)
    lines = await _incarnation_in_process(db, signer, effects, 1)
    assert lines[-1] == "done"

    view = await read_ledger(db, signer)
    findings = check_runs(view, read_effects(effects), {trace_id(0): 0}, gated=True)
    crash = JOURNALING_ORDER.index(crash_after)
    for step in effect_steps(0, gated=True):
        # Executed twice exactly when the kill fell between its effect and its record.
        ran = JOURNALING_ORDER.index(f"effect:{step}") <= crash
        recorded = JOURNALING_ORDER.index(f"append:step:{step}") <= crash
        expected = ["g0", "g1"] if ran and not recorded else ["g0"] if ran else ["g1"]
        assert [e.by for e in findings.executions[trace_id(0), step]] == expected, step
        if step != "gate":
            assert recorded_by(view, trace_id(0), step) == expected[-1]
    kinds = [e.kind for e in view.envelopes[trace_id(0)]]
    assert kinds.count(EnvelopeKind.RUN_STARTED) == 1 and kinds[0] is EnvelopeKind.RUN_STARTED
    assert kinds.count(EnvelopeKind.RUN_FINISHED) == 1
    stored = {e.seq: e.entry_hash for e in view.envelopes[trace_id(0)]}
    assert all(stored.get(seq) == h for seq, h in acknowledged.items())
    report = await verify_ledger_at(db, [signer.verifier().to_text()])
    assert report.ok, report


# -- the runtime bugs above, each reduced to its smallest form -----------------------------------


class Crash(BaseException):
    """Stands in for the process dying at that point: nothing in the runtime catches it."""


def _one_step() -> Program:
    return Program.from_dict({"name": "one", "steps": [{"id": "a", "type": "tool", "tool": "a"}]})


def _apart(journal: LedgerJournal) -> LedgerJournal:
    """Write the run index in commits of its own, as a journal whose run index lives in another
    database does: the half-written states the tests below recover from arise only then (in
    one database an index row commits with its envelope)."""
    journal._one_commit = False
    return journal


def _crash_on_index(journal: LedgerJournal, status: str, *, after: bool = False) -> None:
    """Make the run index's write of `status` (RUNNING: the run's new row) crash, before it
    commits or, with `after`, once it has."""
    write = journal.runs.write

    def writes_status(sql: str, params: Any) -> bool:
        if sql.startswith("INSERT INTO lf_runs"):
            return status == "RUNNING"
        return sql.startswith("UPDATE lf_runs SET status") and params[0] == status

    async def crashing(statements: list[Any]) -> None:
        hit = any(writes_status(sql, params) for sql, params in statements)
        if hit and not after:
            raise Crash
        await write(statements)
        if hit:
            raise Crash

    journal.runs.write = crashing  # type: ignore[method-assign]


async def _reopen(db: Path, signer: Signer, journal: LedgerJournal) -> LedgerJournal:
    await close_journal(journal)
    return await open_journal(str(db), signer)


async def _kinds(journal: LedgerJournal, trace: str) -> list[str]:
    return [e.kind.value for e in await journal.ledger.query(execution_id=trace)]


async def test_crash_after_run_finished_envelope_is_not_finished_twice(tmp_path: Path) -> None:
    db, signer = tmp_path / "l.db", seeded_signer(random.Random(1))
    journal = _apart(await open_journal(str(db), signer))
    _crash_on_index(journal, "SUCCESS")
    with pytest.raises(Crash):
        await ExecutionVM(tools={"a": lambda: 1}, journal=journal).run(_one_step(), trace_id="t")
    journal = await _reopen(db, signer, journal)
    try:
        await ExecutionVM(tools={"a": lambda: 1}, journal=journal).recover()
        assert await _kinds(journal, "t") == ["run_started", "step", "run_finished"]
    finally:
        await close_journal(journal)


async def test_crash_after_run_index_row_still_records_the_run_start(tmp_path: Path) -> None:
    db, signer = tmp_path / "l.db", seeded_signer(random.Random(2))
    journal = _apart(await open_journal(str(db), signer))
    _crash_on_index(journal, "RUNNING", after=True)
    with pytest.raises(Crash):
        await ExecutionVM(tools={"a": lambda: 1}, journal=journal).run(_one_step(), trace_id="t")
    journal = await _reopen(db, signer, journal)
    try:
        [trace] = await ExecutionVM(tools={"a": lambda: 1}, journal=journal).recover()
        assert trace.status is TraceStatus.SUCCESS  # holds
        assert await _kinds(journal, "t") == ["run_started", "step", "run_finished"]
    finally:
        await close_journal(journal)


async def _suspend_then_crash(db: Path, signer: Signer, program: Program, tools: Any) -> None:
    """Run `program` until its suspension envelope is committed, then die before the index row
    says SUSPENDED."""
    journal = _apart(await open_journal(str(db), signer))
    _crash_on_index(journal, "SUSPENDED")
    try:
        with pytest.raises(Crash):
            await ExecutionVM(tools=tools, journal=journal, clock=ManualClock()).run(
                program, trace_id="t"
            )
    finally:
        await close_journal(journal)


async def test_crash_before_index_says_suspended_keeps_the_steps_after_the_suspension(
    tmp_path: Path,
) -> None:
    db, signer = tmp_path / "l.db", seeded_signer(random.Random(3))
    ran: list[str] = []
    tools = {"hold": lambda: "PENDING", "after": lambda: ran.append("after")}
    await _suspend_then_crash(db, signer, Program.from_dict(RACE_PROGRAM), tools)
    journal = await open_journal(str(db), signer)
    try:
        vm = ExecutionVM(tools=tools, journal=journal)
        assert await vm.recover() == []  # the repair: the run is suspended, not running
        done = await vm.resume("t", {"ok": True})
        assert done.status is TraceStatus.SUCCESS  # holds
        assert [r.step_id for r in done.steps] == ["hold", "hold", "after"]
        assert ran == ["after"]
    finally:
        await close_journal(journal)


async def test_crash_before_index_says_suspended_keeps_the_timer(tmp_path: Path) -> None:
    db, signer = tmp_path / "l.db", seeded_signer(random.Random(4))
    program = Program.from_dict(
        {
            "name": "remind",
            "steps": [
                {"id": "sleep", "type": "wait", "seconds": 60},
                {"id": "remind", "type": "tool", "tool": "remind"},
            ],
        }
    )
    ran: list[str] = []
    tools = {"remind": lambda: ran.append("remind")}
    await _suspend_then_crash(db, signer, program, tools)
    journal = await open_journal(str(db), signer)
    try:
        clock = ManualClock()
        vm = ExecutionVM(tools=tools, journal=journal, clock=clock)
        await vm.recover()
        clock.advance(3600)
        fired = await vm.fire_due_timers()
        assert [t.status for t in fired] == [TraceStatus.SUCCESS]
        assert ran == ["remind"]
    finally:
        await close_journal(journal)
