"""Suspension on PENDING / Suspend, and resume at the cursor on the real control path."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from kernel import (
    ExecutionVM,
    InMemoryJournal,
    Interrupt,
    InterruptType,
    Program,
    ResumeError,
    StepStatus,
    Suspend,
    TraceStatus,
)
from tests.conftest import step_ids, tool

PAYMENT = {
    "name": "payment",
    "steps": [
        tool("reserve"),
        tool("pay"),
        {
            "id": "ok",
            "type": "condition",
            "condition": "$pay.output.status == 'paid'",
            "then": "capture",
            "otherwise": "cancel",
        },
        tool("capture", args={"how": "$__webhook__.status"}),
        tool("cancel"),
    ],
}


def make_vm(log: list[str], **kwargs: Any) -> ExecutionVM:
    def recorder(name: str, result: Any = "ok") -> Any:
        def _tool(**_: Any) -> Any:
            log.append(name)
            return result

        return _tool

    tools = {name: recorder(name) for name in ("reserve", "capture", "cancel", "after")}
    tools["pay"] = recorder("pay", "PENDING")
    return ExecutionVM(tools=tools, **kwargs)


async def test_pending_suspends_with_cursor_on_the_real_path() -> None:
    log: list[str] = []
    vm = make_vm(log)
    trace = await vm.run(Program.from_dict(PAYMENT))
    assert trace.status is TraceStatus.SUSPENDED
    assert trace.suspended_step == "pay"
    assert trace.cursor == "ok"
    assert trace.steps[-1].status is StepStatus.SUSPENDED
    assert log == ["reserve", "pay"]


async def test_resume_event_becomes_the_suspended_steps_output() -> None:
    log: list[str] = []
    vm = make_vm(log)
    trace = await vm.run(Program.from_dict(PAYMENT))
    trace = await vm.resume(trace.trace_id, event={"status": "paid"})
    assert trace.status is TraceStatus.SUCCESS
    assert step_ids(trace) == ["reserve", "pay", "pay", "ok", "capture"]
    assert trace.steps[2].status is StepStatus.RESUMED
    assert trace.steps[2].output == {"status": "paid"}
    assert log == ["reserve", "pay", "capture"]  # nothing before the cursor ran again


async def test_webhook_variable_holds_the_event_for_compatibility() -> None:
    seen: dict[str, Any] = {}
    vm = make_vm([])
    vm.register_tool("capture", lambda how: seen.setdefault("how", how))
    trace = await vm.run(Program.from_dict(PAYMENT))
    await vm.resume(trace.trace_id, event={"status": "paid"})
    assert seen == {"how": "paid"}


async def test_resume_of_suspended_branch_target_does_not_run_the_sibling_branch() -> None:
    program = Program.from_dict(
        {
            "name": "p",
            "steps": [
                {
                    "id": "c",
                    "type": "condition",
                    "condition": "true",
                    "then": "wait_a",
                    "otherwise": "wait_b",
                },
                tool("wait_a", tool="pending"),
                tool("wait_b", tool="after"),
            ],
        }
    )
    log: list[str] = []
    vm = ExecutionVM(tools={"pending": lambda: "PENDING", "after": lambda: log.append("b")})
    trace = await vm.run(program)
    assert trace.cursor is None  # a branch target ends the run after it
    trace = await vm.resume(trace.trace_id, event={"ok": True})
    assert trace.status is TraceStatus.SUCCESS
    assert step_ids(trace) == ["c", "wait_a", "wait_a"]
    assert log == []


async def test_resume_continues_after_branch_target_with_next_step() -> None:
    program = Program.from_dict(
        {
            "name": "p",
            "steps": [
                {
                    "id": "c",
                    "type": "condition",
                    "condition": "true",
                    "then": "wait_a",
                    "otherwise": "other",
                },
                tool("wait_a", tool="pending", next_step="done"),
                tool("other", tool="noop"),
                tool("done", tool="noop"),
            ],
        }
    )
    vm = ExecutionVM(tools={"pending": lambda: "PENDING", "noop": lambda: None})
    trace = await vm.run(program)
    assert trace.cursor == "done"
    trace = await vm.resume(trace.trace_id, event="go")
    assert step_ids(trace) == ["c", "wait_a", "wait_a", "done"]


async def test_second_resume_of_the_same_suspension_is_refused_and_changes_nothing() -> None:
    log: list[str] = []
    vm = make_vm(log)
    trace = await vm.run(Program.from_dict(PAYMENT))
    done = await vm.resume(trace.trace_id, event={"status": "paid"})
    before = done.model_dump_json()
    with pytest.raises(ResumeError, match="not suspended"):
        await vm.resume(trace.trace_id, event={"status": "paid"})
    assert done.model_dump_json() == before
    assert log.count("capture") == 1


async def test_concurrent_resumes_continue_exactly_once() -> None:
    log: list[str] = []
    vm = make_vm(log)
    trace = await vm.run(Program.from_dict(PAYMENT))
    results = await asyncio.gather(
        *(vm.resume(trace.trace_id, event={"status": "paid"}) for _ in range(10)),
        return_exceptions=True,
    )
    assert sum(not isinstance(r, BaseException) for r in results) == 1
    assert all(isinstance(r, ResumeError) for r in results if isinstance(r, BaseException))
    assert log.count("capture") == 1


async def test_resume_of_unknown_run_is_refused() -> None:
    with pytest.raises(ResumeError, match="unknown run"):
        await ExecutionVM().resume("nope", event={})


async def test_resume_with_program_refuses_a_different_program_and_keeps_the_run() -> None:
    vm = make_vm([])
    trace = await vm.run(Program.from_dict(PAYMENT))
    changed = Program.from_dict({**PAYMENT, "name": "payment-v2"})
    with pytest.raises(ResumeError, match="program hash"):
        await vm.resume_with_program(
            program=changed, trace_id=trace.trace_id, webhook_event={"status": "paid"}
        )
    done = await vm.resume_with_program(
        program=Program.from_dict(PAYMENT),
        trace_id=trace.trace_id,
        webhook_event={"status": "paid"},
    )
    assert done.status is TraceStatus.SUCCESS


async def test_resume_needs_no_program_argument_the_journal_holds_it() -> None:
    journal = InMemoryJournal()
    first = make_vm([], journal=journal)
    trace = await first.run(Program.from_dict(PAYMENT))
    second = make_vm([], journal=journal)  # another VM that never saw the program
    done = await second.resume(trace.trace_id, event={"status": "declined"})
    assert step_ids(done)[-1] == "cancel"


async def test_suspend_value_records_its_reason_and_emits_an_interrupt() -> None:
    seen: list[Interrupt] = []

    async def observe(interrupt: Interrupt) -> None:
        seen.append(interrupt)

    program = Program.from_dict({"name": "p", "steps": [tool("approve")]})
    vm = ExecutionVM(
        tools={"approve": lambda: Suspend(reason="awaiting manager")}, on_interrupt=observe
    )
    trace = await vm.run(program)
    assert trace.status is TraceStatus.SUSPENDED
    assert trace.steps[0].output == "awaiting manager"
    assert [(i.type, i.step_id, i.trace_id) for i in seen] == [
        (InterruptType.SUSPEND, "approve", trace.trace_id)
    ]


async def test_pending_inside_a_parallel_block_fails_instead_of_suspending() -> None:
    program = Program.from_dict(
        {
            "name": "p",
            "steps": [
                {"id": "blk", "type": "parallel", "parallel_steps": [tool("a", tool="pending")]}
            ],
        }
    )
    trace = await ExecutionVM(tools={"pending": lambda: "PENDING"}).run(program)
    assert trace.status is TraceStatus.FAILED
    assert "cannot suspend" in (trace.error or "")


async def test_resumed_run_keeps_one_unbroken_hash_chain() -> None:
    vm = make_vm([])
    program = Program.from_dict(PAYMENT)
    trace = await vm.run(program)
    suspended_hashes = list(trace.state_hashes)
    done = await vm.resume(trace.trace_id, event={"status": "paid"})
    assert done.state_hashes[: len(suspended_hashes)] == suspended_hashes
    assert len(done.state_hashes) == len(done.steps)


async def test_resume_on_a_vm_missing_a_tool_is_refused_and_the_run_stays_suspended() -> None:
    from kernel import ProgramError

    journal = InMemoryJournal()
    vm = make_vm([], journal=journal)
    trace = await vm.run(Program.from_dict(PAYMENT))
    partial = ExecutionVM(tools={"reserve": lambda: None}, journal=journal)
    with pytest.raises(ProgramError, match="not registered"):
        await partial.resume(trace.trace_id, event={"status": "paid"})
    done = await vm.resume(trace.trace_id, event={"status": "paid"})
    assert done.status is TraceStatus.SUCCESS
