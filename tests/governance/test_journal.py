"""The ledger as the VM's journal, on both backends: one envelope per step, resumable from
another process; with leases, a run taken over by another instance is fenced in the first."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from governance import Ledger, verify_ledger_at
from governance.checkpoint import Signer
from governance.envelope import EnvelopeKind
from governance.journal import Lease, LeaseLostError, LedgerJournal
from governance.storage.database_url import DatabaseUrl
from kernel import ExecutionVM, ManualClock, Program, ResumeError, StepStatus, TraceStatus
from kernel.capability import InMemorySecretResolver
from kernel.tools import reads_secrets
from tests.postgres import admin

PROGRAM = {
    "name": "payment",
    "steps": [
        {"id": "reserve", "type": "tool", "tool": "reserve", "args": {"card": "$card"}},
        {"id": "pay", "type": "tool", "tool": "pay"},
        {
            "id": "ok",
            "type": "condition",
            "condition": "$pay.output.status == 'paid'",
            "then": "capture",
            "otherwise": "cancel",
        },
        {"id": "capture", "type": "tool", "tool": "capture", "args": {"card": "$card"}},
        {"id": "cancel", "type": "tool", "tool": "cancel"},
    ],
}


@reads_secrets
def capture(card: str) -> dict[str, Any]:
    return {"captured": True, "card_used": card}


TOOLS = {
    "reserve": lambda card: {"held": True},
    "pay": lambda: "PENDING",
    "capture": capture,
    "cancel": lambda: "cancelled",
}


def stored_text(db: str) -> str:
    """Everything the database holds, as text: the file's bytes, or the rows of the tables."""
    url = DatabaseUrl.parse(db)
    if url.path is not None:
        return url.path.read_bytes().decode("latin-1")
    assert url.schema is not None
    with admin() as connection:
        connection.execute(f"SET search_path TO {url.schema}")
        rows = connection.execute(
            "SELECT string_agg(payload, '') FROM envelopes UNION ALL "
            "SELECT string_agg(context, '') FROM lf_runs"
        ).fetchall()
    return "".join(str(row[0]) for row in rows)


async def open_journal(path: str, signer: Signer, secrets: Any = None) -> LedgerJournal:
    ledger = await Ledger.open_at(path, signer=signer, origin="test.ledgerflow/log")
    return await LedgerJournal.open(ledger, path, secrets=secrets)


async def close(journal: LedgerJournal) -> None:
    await journal.close()
    await journal.ledger.close()


async def test_each_step_is_an_envelope_and_a_new_process_can_resume(ledger_db: str) -> None:
    db, signer = ledger_db, Signer.generate("test-key")
    secrets = InMemorySecretResolver()
    card = secrets.put("4111-1111-1111-1111-SECRET", subject="cust-1")

    journal = await open_journal(db, signer, secrets)
    vm = ExecutionVM(tools=TOOLS, journal=journal, secrets=secrets)
    trace = await vm.run(Program.from_dict(PROGRAM), {"card": card.uri})
    assert trace.status is TraceStatus.SUSPENDED
    await close(journal)

    # "Another process": new ledger, journal and VM objects over the same file.
    journal = await open_journal(db, signer, secrets)
    vm = ExecutionVM(tools=TOOLS, journal=journal, secrets=secrets)
    done = await vm.resume(trace.trace_id, {"status": "paid"})
    assert done.status is TraceStatus.SUCCESS
    assert done.final_output == {"captured": True, "card_used": card.uri}
    assert done.state_hashes[:2] == trace.state_hashes
    kinds = [e.kind for e in await journal.ledger.query(execution_id=trace.trace_id)]
    assert kinds == [
        EnvelopeKind.RUN_STARTED,
        EnvelopeKind.STEP,
        EnvelopeKind.STEP,
        EnvelopeKind.SUSPEND,
        EnvelopeKind.RESUME,
        EnvelopeKind.STEP,
        EnvelopeKind.STEP,
        EnvelopeKind.RUN_FINISHED,
    ]
    with pytest.raises(ResumeError, match="not suspended"):
        await vm.resume(trace.trace_id, {"status": "paid"})
    stored = await journal.get_trace(trace.trace_id)
    assert stored.status is TraceStatus.SUCCESS
    assert [r.step_id for r in stored.steps] == [r.step_id for r in done.steps]
    assert stored.steps[-1].output["card_used"] == {
        "$ref": card.uri,
        "commitment": secrets.commitment(card),
    }
    await close(journal)
    report = await verify_ledger_at(db, [signer.verifier().to_text()])
    assert report.ok, report.reason
    assert "4111-1111-1111-1111-SECRET" not in stored_text(db)


async def test_a_conditions_record_rides_in_the_commit_of_the_next_record(
    ledger_db: str,
) -> None:
    program = Program.from_dict(
        {
            "name": "routed",
            "steps": [
                {"id": "a", "type": "tool", "tool": "cancel"},
                {
                    "id": "c",
                    "type": "condition",
                    "condition": "$a.output == 'cancelled'",
                    "then": "b",
                },
                {"id": "b", "type": "tool", "tool": "cancel"},
            ],
        }
    )
    journal = await open_journal(ledger_db, Signer.generate("test-key"))
    before = journal.ledger.stats.commits
    trace = await ExecutionVM(tools=TOOLS, journal=journal).run(program)
    assert trace.status is TraceStatus.SUCCESS
    # run_started; a; then c, b and run_finished in one transaction (c rides with the next
    # record, b with the run's end, which follows it with nothing executed between)
    assert journal.ledger.stats.commits - before == 3
    stored = await journal.ledger.query(execution_id=trace.trace_id)
    assert [(e.kind, e.step_id) for e in stored] == [
        (EnvelopeKind.RUN_STARTED, None),
        (EnvelopeKind.STEP, "a"),
        (EnvelopeKind.STEP, "c"),
        (EnvelopeKind.STEP, "b"),
        (EnvelopeKind.RUN_FINISHED, None),
    ]
    rebuilt = await journal.get_trace(trace.trace_id)
    assert rebuilt.state_hashes == trace.state_hashes
    await close(journal)


async def test_inside_run_ends_riding_a_runs_end_waits_for_the_tasks_next_append(
    ledger_db: str,
) -> None:
    program = Program.from_dict(
        {"name": "one", "steps": [{"id": "a", "type": "tool", "tool": "cancel"}]}
    )
    journal = await open_journal(ledger_db, Signer.generate("test-key"))
    vm = ExecutionVM(tools=TOOLS, journal=journal)
    with journal.run_ends_riding():
        ridden = await vm.run(program)
        assert journal.ledger.riding == 2  # the last step and run_finished, not yet stored
        # A run in a task started inside the block is not this caller's to carry.
        other = await asyncio.create_task(vm.run(program))
        assert journal.ledger.riding == 0  # ...and its durable end carried the waiting one
    outside = await vm.run(program)
    assert journal.ledger.riding == 0
    for trace in (ridden, other, outside):
        kinds = [e.kind for e in await journal.ledger.query(execution_id=trace.trace_id)]
        assert kinds[-1] is EnvelopeKind.RUN_FINISHED
        assert (await journal.get_trace(trace.trace_id)).status is TraceStatus.SUCCESS
    await close(journal)


async def test_recover_continues_a_run_whose_process_died(ledger_db: str) -> None:
    class Crash(BaseException):
        pass

    db, signer = ledger_db, Signer.generate("test-key")
    calls: list[str] = []
    crash = {"on": True}

    def step(name: str) -> Any:
        def _tool() -> str:
            calls.append(name)
            if name == "b" and crash["on"]:
                raise Crash()
            return name

        return _tool

    program = Program.from_dict(
        {"name": "abc", "steps": [{"id": n, "type": "tool", "tool": n} for n in "abc"]}
    )
    tools = {n: step(n) for n in "abc"}
    journal = await open_journal(db, signer)
    with pytest.raises(Crash):
        await ExecutionVM(tools=tools, journal=journal).run(program)
    await close(journal)

    crash["on"] = False
    journal = await open_journal(db, signer)
    [trace] = await ExecutionVM(tools=tools, journal=journal).recover()
    assert trace.status is TraceStatus.SUCCESS
    assert calls == ["a", "b", "b", "c"]
    assert [r.status for r in trace.steps] == [StepStatus.SUCCESS] * 3
    await close(journal)
    assert (await verify_ledger_at(db, [signer.verifier().to_text()])).ok


async def test_idempotency_keys_and_event_ids_hold_across_processes(ledger_db: str) -> None:
    from kernel import DuplicateEventError, IdempotencyError

    db, signer = ledger_db, Signer.generate("test-key")
    program = Program.from_dict(
        {
            "name": "p",
            "steps": [
                {"id": "wait", "type": "tool", "tool": "pending"},
                {"id": "after", "type": "tool", "tool": "after", "args": {"e": "$wait.output"}},
            ],
        }
    )
    ran: list[Any] = []
    tools = {"pending": lambda: "PENDING", "after": lambda e: ran.append(e)}

    first = await open_journal(db, signer)
    trace = await ExecutionVM(tools=tools, journal=first).run(
        program, {"order": 1}, idempotency_key="order-1"
    )
    second = await open_journal(db, signer)
    vm2 = ExecutionVM(tools=tools, journal=second)
    same = await vm2.run(program, {"order": 1}, idempotency_key="order-1")
    assert same.trace_id == trace.trace_id and same.status is TraceStatus.SUSPENDED
    with pytest.raises(IdempotencyError):
        await vm2.run(program, {"order": 2}, idempotency_key="order-1")

    await vm2.resume(trace.trace_id, {"paid": True}, event_id="evt_9")
    with pytest.raises(DuplicateEventError):
        await ExecutionVM(tools=tools, journal=first).resume(
            trace.trace_id, {"paid": True}, event_id="evt_9"
        )
    assert ran == [{"paid": True}]

    assert await second.prune(older_than_seconds=0) == 1  # the finished run's index row
    assert (await verify_ledger_at(db, [signer.verifier().to_text()])).ok
    envelopes = await second.ledger.query(execution_id=trace.trace_id)
    assert len(envelopes) == 6  # started, step, suspend, resume, step, finished: all kept
    await close(first)
    await close(second)


async def test_an_event_that_ends_the_run_is_still_marked_delivered(ledger_db: str) -> None:
    # The resume record is the run's last step record (nothing follows the suspended step):
    # it still commits on its own, so that its event id is marked delivered once it is durable.
    from kernel import DuplicateEventError

    program = Program.from_dict(
        {"name": "last", "steps": [{"id": "wait", "type": "tool", "tool": "pending"}]}
    )
    tools = {"pending": lambda: "PENDING"}
    journal = await open_journal(ledger_db, Signer.generate("test-key"))
    vm = ExecutionVM(tools=tools, journal=journal)
    trace = await vm.run(program)
    done = await vm.resume(trace.trace_id, {"ok": True}, event_id="evt_last")
    assert done.status is TraceStatus.SUCCESS
    assert await journal.event_seen(trace.trace_id, "evt_last")
    with pytest.raises(DuplicateEventError):
        await vm.resume(trace.trace_id, {"ok": True}, event_id="evt_last")
    await close(journal)


async def test_a_run_taken_over_by_another_instance_is_fenced_in_the_first(
    ledger_db: str,
) -> None:
    signer = Signer.generate("test-key")
    program = Program.from_dict(
        {"name": "slow", "steps": [{"id": n, "type": "tool", "tool": n} for n in ("a", "b")]}
    )
    entered, stuck, ran = asyncio.Event(), asyncio.Event(), []

    async def paused_b() -> str:  # the first instance is stalled here (a long GC, a VM pause)
        ran.append("first")
        entered.set()
        await stuck.wait()
        return "first"

    def quick_b() -> str:
        ran.append("second")
        return "second"

    first_clock, second_clock = ManualClock(), ManualClock()
    first = await open_journal(ledger_db, signer)
    first = LedgerJournal(first.ledger, first.runs, clock=first_clock, lease=Lease("first", 10))
    second = await open_journal(ledger_db, signer)
    second = LedgerJournal(
        second.ledger, second.runs, clock=second_clock, lease=Lease("second", 10)
    )
    try:
        tools = {"a": lambda: "a", "b": paused_b}
        running = asyncio.create_task(ExecutionVM(tools=tools, journal=first).run(program))
        await entered.wait()
        # Before the lease ends, nobody else may take the run; after it, the second does.
        second_clock.advance(5)
        assert await second.running_runs() == []
        second_clock.advance(6)
        vm = ExecutionVM(tools={"a": lambda: "a", "b": quick_b}, journal=second)
        [done] = [await vm.recover_run(*taken) for taken in await second.running_runs()]
        assert done.status is TraceStatus.SUCCESS and done.final_output == "second"
        # The first learns it lost the lease at its next renewal; its late result is refused.
        assert await first.renew_leases() == {done.trace_id}
        stuck.set()
        with pytest.raises(LeaseLostError, match="lost its lease"):
            await running
        records = [e for e in await second.ledger.query(execution_id=done.trace_id)]
        outputs = [(e.step_id, e.payload["output"]) for e in records if e.kind is EnvelopeKind.STEP]
        assert outputs == [("a", "a"), ("b", "second")]
    finally:
        await close(first)
        await close(second)


async def test_a_due_timer_fires_once_whichever_instances_look(ledger_db: str) -> None:
    signer = Signer.generate("test-key")
    program = Program.from_dict(
        {
            "name": "timer",
            "steps": [
                {"id": "wait", "type": "wait", "seconds": 60},
                {"id": "after", "type": "tool", "tool": "after"},
            ],
        }
    )
    fired: list[str] = []
    clocks = [ManualClock(), ManualClock()]
    journals, vms = [], []
    for n, clock in enumerate(clocks):
        opened = await open_journal(ledger_db, signer)
        journal = LedgerJournal(
            opened.ledger, opened.runs, clock=clock, lease=Lease(f"instance-{n}", 10)
        )
        journals.append(journal)
        vms.append(
            ExecutionVM(
                tools={"after": lambda n=n: fired.append(f"{n}")}, journal=journal, clock=clock
            )
        )
    try:
        waiting = [await vms[0].run(program) for _ in range(20)]
        assert {t.status for t in waiting} == {TraceStatus.SUSPENDED}
        for clock in clocks:
            clock.advance(61)
        done = await asyncio.gather(*(vm.fire_due_timers() for vm in vms))
        assert sorted(t.trace_id for ts in done for t in ts) == sorted(t.trace_id for t in waiting)
        assert len(fired) == 20  # each run continued once, by one instance or the other
        for vm in vms:
            assert await vm.fire_due_timers() == []
    finally:
        for journal in journals:
            await close(journal)
