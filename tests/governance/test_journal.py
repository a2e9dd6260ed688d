"""The ledger as the VM's journal: one envelope per step, resumable from another process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from governance import Ledger, verify_ledger
from governance.checkpoint import Signer
from governance.envelope import EnvelopeKind
from governance.journal import LedgerJournal
from kernel import ExecutionVM, Program, ResumeError, StepStatus, TraceStatus
from kernel.capability import InMemorySecretResolver
from kernel.tools import reads_secrets

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


async def open_journal(path: Path, signer: Signer, secrets: Any = None) -> LedgerJournal:
    ledger = await Ledger.open(path, signer, "test.ledgerflow/log")
    return await LedgerJournal.open(ledger, path, secrets=secrets)


async def close(journal: LedgerJournal) -> None:
    await journal.close()
    await journal.ledger.close()


async def test_each_step_is_an_envelope_and_a_new_process_can_resume(tmp_path: Path) -> None:
    db, signer = tmp_path / "ledger.db", Signer.generate("test-key")
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
    report = await verify_ledger(db, [signer.verifier().to_text()])
    assert report.ok, report.reason
    assert b"4111-1111-1111-1111-SECRET" not in db.read_bytes()


async def test_recover_continues_a_run_whose_process_died(tmp_path: Path) -> None:
    class Crash(BaseException):
        pass

    db, signer = tmp_path / "ledger.db", Signer.generate("test-key")
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
    assert (await verify_ledger(db, [signer.verifier().to_text()])).ok


async def test_idempotency_keys_and_event_ids_hold_across_processes(tmp_path: Path) -> None:
    from kernel import DuplicateEventError, IdempotencyError

    db, signer = tmp_path / "ledger.db", Signer.generate("test-key")
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
    assert (await verify_ledger(db, [signer.verifier().to_text()])).ok
    envelopes = await second.ledger.query(execution_id=trace.trace_id)
    assert len(envelopes) == 6  # started, step, suspend, resume, step, finished: all kept
    await close(first)
    await close(second)
