"""Exactly one resume wins: the SUSPENDED -> RUNNING claim is a compare-and-set in the run index,
which SQLite serialises across connections and processes.

Two long-lived worker processes over one database file are told to resume the same suspended run
at the same moment, 100 times; then the same race inside one process, 10 resumes at once. Every
time exactly one caller wins, the run ends SUCCESS with exactly one RESUMED record, and the tool
after the suspension ran once, for the winner.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from governance import verify_ledger_at
from governance.checkpoint import Signer
from governance.envelope import EnvelopeKind
from governance.journal import LedgerJournal
from governance.runs import RunStore
from kernel import ExecutionVM, Program, ResumeError, StepStatus, Trace, TraceStatus
from tests.durable import (
    WorkerProcess,
    after_lines,
    read_effects,
    read_ledger,
    seeded_signer,
)
from tests.durable.worker import RACE_PROGRAM, close_journal, hold, open_journal

SEED = 20_251_125
RACES = 100
CONTENDERS = 10


def _never(**kwargs: Any) -> None:
    raise AssertionError("the creating process must not run the step after the suspension")


async def _suspended_runs(db: Path, signer: Signer, count: int) -> list[str]:
    journal = await open_journal(str(db), signer)
    try:
        vm = ExecutionVM(tools={"hold": hold, "after": _never}, journal=journal)
        program = Program.from_dict(RACE_PROGRAM)
        ids = [f"race-{n:03d}" for n in range(count)]
        for trace_id in ids:
            trace = await vm.run(program, trace_id=trace_id)
            assert trace.status is TraceStatus.SUSPENDED
        return ids
    finally:
        await close_journal(journal)


def _check_resumed_once(trace: Trace, winner_event: Any) -> None:
    """hold SUSPENDED, hold RESUMED (the winner's event), after SUCCESS; nothing else."""
    assert trace.status is TraceStatus.SUCCESS, trace.error
    assert [(r.step_id, r.status) for r in trace.steps] == [
        ("hold", StepStatus.SUSPENDED),
        ("hold", StepStatus.RESUMED),
        ("after", StepStatus.SUCCESS),
    ]
    assert trace.steps[1].output == winner_event


def test_two_processes_race_to_resume_each_run(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    signer = seeded_signer(rng)
    db, effects = tmp_path / "ledger.db", tmp_path / "effects.log"
    ids = asyncio.run(_suspended_runs(db, signer, RACES))
    workers = {
        name: WorkerProcess(
            "race",
            "--db",
            str(db),
            "--key",
            signer.to_text(),
            "--effects",
            str(effects),
            "--name",
            name,
            stdin=True,
        )
        for name in ("A", "B")
    }
    for worker in workers.values():
        assert worker.wait_for(lambda lines: "ready" in lines), worker.describe()
    winners: dict[str, str] = {}
    try:
        for number, trace_id in enumerate(ids):
            # Both are blocked reading stdin; write to both pipes back to back (in a seeded
            # order, so that neither is always first) and collect both answers.
            order = ["A", "B"] if rng.random() < 0.5 else ["B", "A"]
            for name in order:
                workers[name].send(f"resume {trace_id}")
            answers = {}
            for name, worker in workers.items():
                answered = number + 2  # "ready", then one line per race
                assert worker.wait_for(after_lines(answered)), worker.describe()
                answers[name] = worker.lines[answered - 1]
            won = [name for name, answer in answers.items() if answer == "won SUCCESS"]
            lost = [name for name, answer in answers.items() if answer == "lost"]
            assert len(won) == 1 and len(lost) == 1, (trace_id, answers)
            winners[trace_id] = won[0]
    finally:
        for worker in workers.values():  # one after the other: each closes its ledger
            assert worker.finish() == 0, worker.describe()

    view = asyncio.run(read_ledger(db, signer))
    for trace_id in ids:
        assert view.index[trace_id] == "SUCCESS"
        _check_resumed_once(view.traces[trace_id], {"by": winners[trace_id]})
        kinds = [e.kind for e in view.envelopes[trace_id]]
        assert kinds.count(EnvelopeKind.RESUME) == 1
        assert kinds.count(EnvelopeKind.RUN_FINISHED) == 1
    ran = Counter((e.trace_id, e.step_id, e.key, e.by) for e in read_effects(effects))
    assert ran == Counter({(t, "after", f"{t}:after:1", winners[t]): 1 for t in ids})
    report = asyncio.run(verify_ledger_at(db, [signer.verifier().to_text()]))
    assert report.ok, report
    print(f"\nwins: {sorted(Counter(winners.values()).items())}")


@pytest.mark.parametrize("connections", ["one journal", "a run index connection per caller"])
async def test_concurrent_resumes_in_one_process(tmp_path: Path, connections: str) -> None:
    signer = seeded_signer(random.Random(SEED))
    db = tmp_path / "ledger.db"
    ids = await _suspended_runs(db, signer, 10)
    ran: list[tuple[str, int]] = []
    journal = await open_journal(str(db), signer)
    journals = [journal]
    if connections != "one journal":
        journals = [LedgerJournal(journal.ledger, RunStore.in_file(db)) for _ in range(CONTENDERS)]
        for extra in journals:
            await extra.runs.open()

    def after(ctx: Any) -> None:
        ran.append((ctx.trace_id, ctx.execution))

    vms = [
        ExecutionVM(tools={"hold": hold, "after": after}, journal=journals[n % len(journals)])
        for n in range(CONTENDERS)
    ]
    try:
        for trace_id in ids:
            results = await asyncio.gather(
                *(vm.resume(trace_id, {"contender": n}) for n, vm in enumerate(vms)),
                return_exceptions=True,
            )
            winners = [r for r in results if isinstance(r, Trace)]
            assert len(winners) == 1, results
            losers = [r for r in results if r is not winners[0]]
            assert all(isinstance(r, ResumeError) for r in losers), [repr(r) for r in losers]
            [trace] = winners
            _check_resumed_once(trace, {"contender": results.index(trace)})
            stored = await journal.get_trace(trace_id)
            _check_resumed_once(stored, trace.steps[1].output)
        assert ran == [(trace_id, 1) for trace_id in ids]
    finally:
        if connections != "one journal":
            for extra in journals:
                await extra.runs.close()
        await close_journal(journal)


# -- one run-index connection shared by concurrent callers --------------------------------


def _one_step() -> Program:
    return Program.from_dict({"name": "one", "steps": [{"id": "a", "type": "tool", "tool": "a"}]})


async def test_concurrent_runs_on_one_journal(tmp_path: Path) -> None:
    signer = seeded_signer(random.Random(1))
    journal = await open_journal(str(tmp_path / "ledger.db"), signer)
    try:
        vm = ExecutionVM(tools={"a": lambda: 1}, journal=journal)
        traces = await asyncio.gather(vm.run(_one_step()), vm.run(_one_step()))
        assert [t.status for t in traces] == [TraceStatus.SUCCESS] * 2
    finally:
        await close_journal(journal)


async def test_a_refused_run_start_leaves_the_journal_usable(tmp_path: Path) -> None:
    signer = seeded_signer(random.Random(2))
    journal = await open_journal(str(tmp_path / "ledger.db"), signer)
    try:
        vm = ExecutionVM(tools={"a": lambda: 1}, journal=journal)
        await vm.run(_one_step(), trace_id="t1")
        with pytest.raises(Exception, match="UNIQUE"):
            await vm.run(_one_step(), trace_id="t1")  # refused: that id is taken (fine)
        assert (await vm.run(_one_step(), trace_id="t2")).status is TraceStatus.SUCCESS
    finally:
        await close_journal(journal)
