"""on_error: fail, skip, retry with exponential backoff through the Clock port."""

from __future__ import annotations

from typing import Any

from kernel import ManualClock, StepStatus, TraceStatus
from tests.conftest import step_ids, tool


class Flaky:
    """Fails `failures` times, then returns "ok"."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise ConnectionError(f"attempt {self.calls} refused")
        return "ok"


async def test_on_error_fail_fails_the_run_with_the_tools_message(run: Any) -> None:
    trace = await run(
        {"name": "p", "steps": [tool("a", tool="flaky"), tool("b", tool="flaky")]},
        {"flaky": Flaky(5)},
    )
    assert trace.status is TraceStatus.FAILED
    assert step_ids(trace) == ["a"]
    assert trace.error == "step 'a': ConnectionError: attempt 1 refused"


async def test_on_error_skip_records_skipped_with_none_and_continues(run: Any) -> None:
    program = {
        "name": "p",
        "steps": [
            tool("a", tool="flaky", on_error="skip"),
            tool("b", tool="echo", args={"prev": "$a"}),
        ],
    }
    trace = await run(program, {"flaky": Flaky(5), "echo": lambda prev: {"prev": prev}})
    assert trace.status is TraceStatus.SUCCESS
    assert trace.steps[0].status is StepStatus.SKIPPED
    assert trace.steps[0].output is None
    assert "attempt 1 refused" in (trace.steps[0].error or "")
    assert trace.final_output == {"prev": None}


async def test_retry_backs_off_exponentially_without_sleeping(run: Any, clock: ManualClock) -> None:
    flaky = Flaky(3)
    trace = await run(
        {"name": "p", "steps": [tool("a", tool="flaky", on_error="retry", max_retries=4)]},
        {"flaky": flaky},
    )
    assert trace.status is TraceStatus.SUCCESS
    assert trace.steps[0].attempts == 4
    assert clock.sleeps == [1.0, 2.0, 4.0]
    assert trace.metrics.retries == 3
    assert trace.metrics.tool_calls == 4


async def test_retry_gives_up_after_max_retries_attempts(run: Any, clock: ManualClock) -> None:
    flaky = Flaky(10)
    trace = await run(
        {"name": "p", "steps": [tool("a", tool="flaky", on_error="retry")]}, {"flaky": flaky}
    )
    assert trace.status is TraceStatus.FAILED
    assert flaky.calls == 3  # max_retries defaults to 3 total attempts
    assert "attempt 3 refused" in (trace.error or "")


async def test_backoff_is_configurable_and_capped(run: Any, clock: ManualClock) -> None:
    step = tool(
        "a",
        tool="flaky",
        on_error="retry",
        max_retries=6,
        backoff={"base_seconds": 10, "factor": 3, "max_seconds": 60},
    )
    await run({"name": "p", "steps": [step]}, {"flaky": Flaky(10)})
    assert clock.sleeps == [10, 30, 60, 60, 60]


async def test_async_tools_are_awaited(run: Any) -> None:
    async def fetch(n: int) -> int:
        return n * 2

    trace = await run(
        {"name": "p", "steps": [tool("f", tool="fetch", args={"n": 21})]}, {"fetch": fetch}
    )
    assert trace.final_output == 42


async def test_output_without_json_form_fails_the_step_clearly(run: Any) -> None:
    trace = await run(
        {"name": "p", "steps": [tool("a", tool="bad")]}, {"bad": lambda: float("nan")}
    )
    assert trace.status is TraceStatus.FAILED
    assert "no canonical JSON form" in (trace.error or "")
