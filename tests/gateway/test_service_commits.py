"""What a call through the application service commits: a run's end rides in the transaction of
the call's access record, so the answer never leaves before both are stored, for one fsync."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.application.principal import Principal
from gateway.application.service import LedgerflowService
from governance.envelope import EnvelopeKind
from kernel import PENDING, Program, TraceStatus
from tests.gateway.services import open_service

CONDITIONS = {
    "name": "branches",
    "max_steps": 10,
    "steps": [
        {"id": "check", "type": "condition", "condition": "1 == 1", "then": "yes"},
        {"id": "no", "type": "condition", "condition": "1 == 2", "otherwise": "check"},
        {"id": "yes", "type": "condition", "condition": "2 > 1", "then": "done"},
        {"id": "done", "type": "condition", "condition": "3 >= 3", "otherwise": "check"},
    ],
}
GATED = {
    "name": "gated",
    "steps": [
        {"id": "ask", "type": "tool", "tool": "ask"},
        {"id": "after", "type": "tool", "tool": "note"},
    ],
}
TOOLS = {"ask": lambda: PENDING, "note": lambda: "noted"}
WHO = Principal.local_operator()


@pytest.fixture
async def service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Any]:
    async with open_service(tmp_path, monkeypatch, TOOLS) as service:
        yield service


def stored_rows(service: LedgerflowService, trace_id: str) -> list[tuple[str, str | None]]:
    """(kind, step) of the run's envelopes as another connection sees them right now."""
    path = service.workspace.url.path
    assert path is not None
    with sqlite3.connect(path) as other:
        rows = other.execute(
            "SELECT kind, step_id FROM envelopes WHERE execution_id = ? ORDER BY seq", (trace_id,)
        ).fetchall()
    return [(kind, step) for kind, step in rows]


async def test_a_run_programs_end_and_access_record_share_one_commit(
    service: LedgerflowService,
) -> None:
    ledger = service.workspace.ledger
    before = ledger.stats.commits
    trace = await service.run_program(WHO, CONDITIONS)
    assert trace.status is TraceStatus.SUCCESS
    # A run of decisions only: its start, the three conditions, its end and the access record
    # in one commit
    assert ledger.stats.commits - before == 1
    assert ledger.riding == 0
    assert stored_rows(service, trace.trace_id) == [
        ("run_started", None),
        ("step", "check"),
        ("step", "yes"),
        ("step", "done"),
        ("run_finished", None),
        ("access", None),
    ]
    stored = await service.get_trace(WHO, trace.trace_id)
    assert stored.status is TraceStatus.SUCCESS  # the index row rode along


async def test_a_run_with_a_tool_commits_its_start_before_the_tool_runs(
    service: LedgerflowService,
) -> None:
    trace_id = "run-with-a-tool"
    seen: list[list[tuple[str, str | None]]] = []

    def look() -> str:
        seen.append(stored_rows(service, trace_id))
        return "looked"

    service.vm.register_tool("look", look)
    program = {"name": "looks", "steps": [{"id": "look", "type": "tool", "tool": "look"}]}
    await service.vm.run(Program.from_dict(program), trace_id=trace_id)
    assert seen == [[("run_started", None)]]


async def test_a_keyed_run_of_decisions_commits_its_start_at_once(
    service: LedgerflowService,
) -> None:
    # A concurrent caller with the same key must find the run: its start is not held back.
    ledger = service.workspace.ledger
    before = ledger.stats.commits
    trace = await service.run_program(WHO, CONDITIONS, idempotency_key="once")
    assert ledger.stats.commits - before >= 2
    again = await service.run_program(WHO, CONDITIONS, idempotency_key="once")
    assert again.trace_id == trace.trace_id


async def test_a_resume_ends_with_its_access_record_and_a_suspension_is_stored_too(
    service: LedgerflowService,
) -> None:
    suspended = await service.run_program(WHO, GATED)
    assert suspended.status is TraceStatus.SUSPENDED
    assert stored_rows(service, suspended.trace_id)[-2:] == [("suspend", "ask"), ("access", None)]
    assert (await service.get_trace(WHO, suspended.trace_id)).status is TraceStatus.SUSPENDED
    done = await service.resume_run(WHO, suspended.trace_id, {"ok": True})
    assert done.status is TraceStatus.SUCCESS
    assert stored_rows(service, done.trace_id)[-3:] == [
        ("step", "after"),
        ("run_finished", None),
        ("access", None),
    ]
    assert service.workspace.ledger.riding == 0


async def test_a_run_outside_a_service_call_ends_durably_on_its_own(
    service: LedgerflowService,
) -> None:
    trace = await service.vm.run(Program.from_dict(CONDITIONS))
    assert service.workspace.ledger.riding == 0
    kinds = [kind for kind, _ in stored_rows(service, trace.trace_id)]
    assert kinds[-1] == EnvelopeKind.RUN_FINISHED.value
