"""llm steps: any adapter works, outputs are guarded, hung calls are cancelled."""

from __future__ import annotations

import asyncio
from typing import Any

from kernel import InterruptType, StepStatus, TraceStatus
from kernel.adapters import MockLLMAdapter
from tests.conftest import step_ids, tool

REFUND = {
    "name": "customer_refund",
    "steps": [
        {
            "id": "analyze",
            "type": "llm",
            "prompt": "Is this a valid refund request? Reply 'yes' or 'no'.\nRequest: $user_input",
            "output_key": "decision",
            "allowed_outputs": ["yes", "no"],
        },
        {
            "id": "guardrail",
            "type": "condition",
            "condition": "'yes' in '$decision'",
            "then": "process_refund",
            "otherwise": "reject",
        },
        {"id": "process_refund", "type": "tool", "tool": "issue_refund", "is_terminal": True},
        {"id": "reject", "type": "tool", "tool": "send_rejection", "is_terminal": True},
    ],
}
TOOLS = {"issue_refund": lambda: "refunded", "send_rejection": lambda: "rejected"}


class MyAdapter:
    """The reference README's custom adapter shape: returns a plain str."""

    async def complete(self, messages: list[dict[str, Any]], **kwargs: Any) -> str:
        return "yes" if "charged twice" in messages[-1]["content"] else "no"


async def test_reference_quick_start_runs_with_a_custom_adapter(run: Any) -> None:
    trace = await run(REFUND, TOOLS, {"user_input": "I was charged twice"}, llm=MyAdapter())
    assert trace.status is TraceStatus.SUCCESS
    assert step_ids(trace) == ["analyze", "guardrail", "process_refund"]
    trace = await run(REFUND, TOOLS, {"user_input": "I want free stuff"}, llm=MyAdapter())
    assert step_ids(trace)[-1] == "reject"


async def test_mock_adapter_counts_tokens_and_calls(run: Any) -> None:
    trace = await run(REFUND, TOOLS, {"user_input": "x"}, llm=MockLLMAdapter(" yes \n"))
    assert trace.steps[0].output == "yes"  # stripped before the guard compares it
    assert trace.metrics.llm_calls == 1
    assert trace.total_tokens() == trace.steps[0].usage.total_tokens > 0  # type: ignore[union-attr]


async def test_output_outside_allowed_outputs_fails_naming_both(run: Any) -> None:
    trace = await run(REFUND, TOOLS, {"user_input": "x"}, llm=MockLLMAdapter("maybe"))
    assert trace.status is TraceStatus.FAILED
    assert "model replied 'maybe'" in (trace.error or "")
    assert "['yes', 'no']" in (trace.error or "")


async def test_skip_on_mismatch_uses_the_first_allowed_output(run: Any) -> None:
    program = {
        **REFUND,
        "steps": [
            {**REFUND["steps"][0], "on_error": "skip"},  # type: ignore[dict-item]
            *REFUND["steps"][1:],
        ],
    }  # type: ignore[misc]
    trace = await run(program, TOOLS, {"user_input": "x"}, llm=MockLLMAdapter("maybe"))
    assert trace.steps[0].status is StepStatus.SKIPPED
    assert trace.steps[0].output == "yes"
    assert step_ids(trace)[-1] == "process_refund"


async def test_retry_on_mismatch_asks_again(run: Any) -> None:
    program = {
        **REFUND,
        "steps": [
            {**REFUND["steps"][0], "on_error": "retry"},  # type: ignore[dict-item]
            *REFUND["steps"][1:],
        ],
    }  # type: ignore[misc]
    llm = MockLLMAdapter(["perhaps", "NO", "no"])
    trace = await run(program, TOOLS, {"user_input": "x"}, llm=llm)
    assert trace.steps[0].attempts == 3
    assert len(llm.calls) == 3
    assert step_ids(trace)[-1] == "reject"


class HungAdapter:
    def __init__(self) -> None:
        self.cancelled = False

    async def complete(self, messages: list[dict[str, Any]], **kwargs: Any) -> str:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        return "never"


async def test_hung_adapter_is_cancelled_and_falls_back(run: Any) -> None:
    llm = HungAdapter()
    seen: list[InterruptType] = []

    async def observe(interrupt: Any) -> None:
        seen.append(interrupt.type)

    program = {
        **REFUND,
        "steps": [
            {
                **REFUND["steps"][0],
                "timeout_seconds": 0.05,  # type: ignore[dict-item]
                "on_timeout": "fallback",
            },
            *REFUND["steps"][1:],
        ],
    }  # type: ignore[misc]
    trace = await run(program, TOOLS, {"user_input": "x"}, llm=llm, on_interrupt=observe)
    assert llm.cancelled
    assert trace.steps[0].output == "yes"
    assert "timed out" in (trace.steps[0].error or "")
    assert seen == [InterruptType.TIMEOUT]


async def test_hung_async_tool_times_out_and_fails(run: Any) -> None:
    cancelled = asyncio.Event()

    async def hang() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    trace = await run(
        {"name": "p", "steps": [tool("h", tool="hang", timeout_seconds=0.05)]}, {"hang": hang}
    )
    assert trace.status is TraceStatus.FAILED
    assert trace.error == "step 'h': timed out after 0.05s"
    assert cancelled.is_set()


async def test_model_options_are_passed_through(run: Any) -> None:
    llm = MockLLMAdapter("ok")
    program = {
        "name": "p",
        "steps": [
            {
                "id": "a",
                "type": "llm",
                "prompt": "hi",
                "model": "m1",
                "temperature": 0.0,
                "options": {"top_p": 0.5},
            }
        ],
    }
    await run(program, llm=llm)
    assert llm.calls[0]["options"] == {"top_p": 0.5, "model": "m1", "temperature": 0.0}


async def test_adapter_error_surfaces_as_a_step_error_with_its_message(run: Any) -> None:
    class Down:
        async def complete(self, messages: list[dict[str, Any]], **kwargs: Any) -> str:
            raise RuntimeError("provider unavailable: 503")

    trace = await run(
        {"name": "p", "steps": [{"id": "a", "type": "llm", "prompt": "hi"}]}, llm=Down()
    )
    assert trace.status is TraceStatus.FAILED
    assert trace.error == "step 'a': RuntimeError: provider unavailable: 503"
