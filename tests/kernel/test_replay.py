"""Replay: recorded runs reproduce their state hashes; a changed program is caught at the step."""

from __future__ import annotations

import random
from typing import Any

from kernel import ExecutionVM, Program, TraceStatus, replay
from kernel.adapters import MockLLMAdapter
from tests.conftest import tool


def refund_program(threshold: int = 100) -> Program:
    return Program.from_dict(
        {
            "name": "refund",
            "max_steps": 50,
            "steps": [
                tool("lookup", args={"order": "$order"}),
                {
                    "id": "classify",
                    "type": "llm",
                    "prompt": "Classify order $order",
                    "allowed_outputs": ["refund", "query"],
                    "output_key": "kind",
                },
                {
                    "id": "fetch",
                    "type": "parallel",
                    "parallel_steps": [
                        tool("history", args={"order": "$order"}),
                        tool("risk", args={"order": "$order"}, on_error="skip"),
                    ],
                },
                {
                    "id": "guard",
                    "type": "condition",
                    "condition": f"$lookup.output.amount <= {threshold} and $kind == 'refund'",
                    "then": "pay",
                    "otherwise": "review",
                },
                tool("pay", next_step="done"),
                tool("review", is_terminal=True),
                tool("done"),
            ],
        }
    )


def tools(rng: random.Random) -> dict[str, Any]:
    def risk(order: str) -> float:
        if rng.random() < 0.3:
            raise TimeoutError("risk service slow")
        return round(rng.random(), 3)

    return {
        "lookup": lambda order: {"order": order, "amount": rng.randint(1, 200)},
        "history": lambda order: [order, rng.randint(0, 5)],
        "risk": risk,
        "pay": lambda: "paid",
        "review": lambda: "queued",
        "done": lambda: "closed",
    }


async def record_runs(n: int) -> list[Any]:
    rng = random.Random(7)
    llm = MockLLMAdapter([rng.choice(["refund", "query"]) for _ in range(n)])
    vm = ExecutionVM(tools=tools(rng), llm=llm)
    return [await vm.run(refund_program(), {"order": f"o-{i}"}) for i in range(n)]


async def test_replay_of_a_thousand_recorded_runs_matches() -> None:
    traces = await record_runs(1000)
    assert {t.status for t in traces} == {TraceStatus.SUCCESS}
    program = refund_program()
    reports = [await replay(program, trace) for trace in traces]
    assert all(r.ok for r in reports), next(r for r in reports if not r.ok)
    assert sum(r.steps_checked for r in reports) == sum(len(t.steps) for t in traces)


async def test_program_changed_in_one_step_is_divergent_at_that_step() -> None:
    traces = await record_runs(200)
    changed = refund_program(threshold=50)
    affected = [
        t
        for t in traces
        if 50 < t.step("lookup").output["amount"] <= 100 and t.step("classify").output == "refund"
    ]
    assert affected
    for trace in affected:
        report = await replay(changed, trace)
        assert not report.ok
        assert report.divergence is not None
        assert report.divergence.step_id == "guard"
        assert report.divergence.index == [r.step_id for r in trace.steps].index("guard")
    unaffected = [t for t in traces if t.step("lookup").output["amount"] <= 50]
    assert all([(await replay(changed, t)).ok for t in unaffected])


async def test_replay_feeds_resume_events() -> None:
    program = Program.from_dict(
        {
            "name": "pay",
            "steps": [
                tool("init", tool="pending"),
                {
                    "id": "ok",
                    "type": "condition",
                    "condition": "$init.output.status == 'paid'",
                    "then": "capture",
                    "otherwise": "cancel",
                },
                tool("capture", tool="noop"),
                tool("cancel", tool="noop"),
            ],
        }
    )
    vm = ExecutionVM(tools={"pending": lambda: "PENDING", "noop": lambda: None})
    suspended = await vm.run(program)
    assert (await replay(program, suspended)).ok
    done = await vm.resume(suspended.trace_id, {"status": "paid"})
    report = await replay(program, done)
    assert report.ok and report.status is TraceStatus.SUCCESS


async def test_replay_reports_a_step_the_new_program_no_longer_has() -> None:
    program = Program.from_dict({"name": "p", "steps": [tool("a"), tool("b")]})
    trace = await ExecutionVM(tools={"a": lambda: 1, "b": lambda: 2}).run(program)
    shorter = Program.from_dict({"name": "p", "steps": [tool("a")]})
    report = await replay(shorter, trace)
    assert report.divergence is not None
    assert report.divergence.step_id == "b"
    assert "before recorded step 'b'" in report.divergence.reason
