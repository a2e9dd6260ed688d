"""Circuit breakers: transitions on a ManualClock, sync and async tools, what wrap preserves."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from typing import Any

import pytest

from gateway.tools.circuit import CircuitBreakers, CircuitOpenError
from kernel import ManualClock, StepStatus, TraceStatus
from kernel.tools import ToolContext, bind_tool, reads_secrets


class Flaky:
    """A sync tool that fails while `failing` is set, counting the calls that reach it."""

    def __init__(self) -> None:
        self.failing = True
        self.calls = 0

    def __call__(self, order_id: str) -> str:
        self.calls += 1
        if self.failing:
            raise ConnectionError("provider down")
        return f"ok {order_id}"


@pytest.fixture
def breakers(clock: ManualClock) -> CircuitBreakers:
    return CircuitBreakers(threshold=3, reset_seconds=30, clock=clock)


def fail_times(fn: Callable[..., Any], n: int) -> None:
    for _ in range(n):
        with pytest.raises(ConnectionError):
            fn(order_id="A")


def test_opens_after_threshold_consecutive_failures(
    breakers: CircuitBreakers, clock: ManualClock
) -> None:
    tool = Flaky()
    wrapped = breakers.wrap("pay", tool)
    fail_times(wrapped, 2)
    assert breakers.states()["pay"] == {"state": "closed", "failures": 2, "opened_at": None}
    fail_times(wrapped, 1)
    assert breakers.states()["pay"] == {"state": "open", "failures": 3, "opened_at": clock.now()}

    clock.advance(10)
    with pytest.raises(CircuitOpenError) as caught:
        wrapped(order_id="A")
    assert str(caught.value) == (
        "tool 'pay' is unavailable: circuit open after 3 consecutive failures; retry after 20s"
    )
    assert caught.value.retry_after == 20 and caught.value.tool == "pay"
    assert tool.calls == 3  # failed fast: the tool was not called


def test_a_success_resets_the_count(breakers: CircuitBreakers) -> None:
    tool = Flaky()
    wrapped = breakers.wrap("pay", tool)
    fail_times(wrapped, 2)
    tool.failing = False
    assert wrapped(order_id="A") == "ok A"
    tool.failing = True
    fail_times(wrapped, 2)
    assert breakers.states()["pay"]["state"] == "closed"


def test_half_open_trial_success_closes(breakers: CircuitBreakers, clock: ManualClock) -> None:
    tool = Flaky()
    wrapped = breakers.wrap("pay", tool)
    fail_times(wrapped, 3)
    clock.advance(29.9)
    with pytest.raises(CircuitOpenError, match="retry after 1s"):
        wrapped(order_id="A")
    clock.advance(0.1)
    assert breakers.states()["pay"]["state"] == "half_open"
    tool.failing = False
    assert wrapped(order_id="A") == "ok A"
    assert breakers.states()["pay"] == {"state": "closed", "failures": 0, "opened_at": None}


def test_half_open_trial_failure_reopens_for_a_full_period(
    breakers: CircuitBreakers, clock: ManualClock
) -> None:
    tool = Flaky()
    wrapped = breakers.wrap("pay", tool)
    fail_times(wrapped, 3)
    clock.advance(30)
    fail_times(wrapped, 1)  # the trial reached the tool and failed
    assert breakers.states()["pay"] == {"state": "open", "failures": 4, "opened_at": clock.now()}
    clock.advance(29)
    with pytest.raises(CircuitOpenError, match="after 4 consecutive failures; retry after 1s"):
        wrapped(order_id="A")
    assert tool.calls == 4


async def test_async_tool_and_a_single_trial_call(
    breakers: CircuitBreakers, clock: ManualClock
) -> None:
    release = asyncio.Event()
    fail = True

    async def lookup(order_id: str) -> str:
        await release.wait()
        if fail:
            raise TimeoutError("upstream")
        return order_id

    wrapped = breakers.wrap("lookup", lookup)
    assert inspect.iscoroutinefunction(wrapped)
    release.set()
    for _ in range(3):
        with pytest.raises(TimeoutError):
            await wrapped(order_id="A")
    with pytest.raises(CircuitOpenError):
        await wrapped(order_id="A")

    clock.advance(30)
    release.clear()
    fail = False
    trial = asyncio.create_task(wrapped(order_id="A"))
    await asyncio.sleep(0)
    with pytest.raises(CircuitOpenError, match="retry after the trial call in progress finishes"):
        await wrapped(order_id="B")
    release.set()
    assert await trial == "A"
    assert await wrapped(order_id="B") == "B"


async def test_cancellation_gives_no_verdict(breakers: CircuitBreakers, clock: ManualClock) -> None:
    hang = True

    async def slow() -> str:
        if hang:
            await asyncio.Event().wait()
        raise ConnectionError("down")

    wrapped = breakers.wrap("slow", slow)
    hang = False
    for _ in range(3):
        with pytest.raises(ConnectionError):
            await wrapped()
    clock.advance(30)
    hang = True
    trial = asyncio.create_task(wrapped())
    await asyncio.sleep(0)
    trial.cancel()  # as a step timeout would
    with pytest.raises(asyncio.CancelledError):
        await trial
    assert breakers.states()["slow"] == {
        "state": "half_open",
        "failures": 3,
        "opened_at": clock.now() - 30,
    }
    hang = False
    with pytest.raises(ConnectionError):  # the slot was released: a new trial runs
        await wrapped()
    assert breakers.states()["slow"]["state"] == "open"


async def test_sync_tool_returning_an_awaitable_is_judged_when_awaited(
    breakers: CircuitBreakers,
) -> None:
    async def failing() -> None:
        raise ConnectionError("down")

    def tool() -> Any:
        return failing()

    wrapped = breakers.wrap("deferred", tool)
    for _ in range(3):
        with pytest.raises(ConnectionError):
            await wrapped()
    assert breakers.states()["deferred"]["state"] == "open"


def test_breakers_are_per_tool(breakers: CircuitBreakers) -> None:
    bad, good = breakers.wrap("bad", Flaky()), breakers.wrap("good", lambda: "fine")
    fail_times(bad, 3)
    assert good() == "fine"
    assert {n: s["state"] for n, s in breakers.states().items()} == {
        "bad": "open",
        "good": "closed",
    }


def test_wrap_preserves_what_the_vm_reads(breakers: CircuitBreakers) -> None:
    @reads_secrets
    async def charge(amount: int, *, ctx: ToolContext, idempotency_key: str = "") -> dict[str, Any]:
        """Charge a card."""
        return {"amount": amount}

    def plain(order_id: str, note: str = "") -> str:
        return order_id

    for fn in (charge, plain, Flaky()):
        wrapped = breakers.wrap("t", fn)
        assert inspect.signature(wrapped) == inspect.signature(fn)
        original, bound = bind_tool("t", fn), bind_tool("t", wrapped)
        assert (bound.is_async, bound.accepts, bound.reads_secrets) == (
            original.is_async,
            original.accepts,
            original.reads_secrets,
        )
        assert (bound.wants_ctx, bound.wants_idempotency_key) == (
            original.wants_ctx,
            original.wants_idempotency_key,
        )
    wrapped_charge = breakers.wrap("charge", charge)
    assert wrapped_charge.__name__ == "charge" and wrapped_charge.__doc__ == "Charge a card."
    assert bind_tool("charge", wrapped_charge).reads_secrets


async def test_through_the_vm(run: Callable[..., Any], clock: ManualClock) -> None:
    breakers = CircuitBreakers(threshold=2, reset_seconds=60, clock=clock)
    tool = Flaky()
    program = {"name": "p", "steps": [{"id": "pay", "type": "tool", "tool": "pay"}]}
    tools = breakers.wrap_all({"pay": tool})
    for _ in range(2):
        trace = await run(program, tools=tools, context={"order_id": "A-1"})
        assert "provider down" in (trace.steps[0].error or "")
    trace = await run(program, tools=tools, context={"order_id": "A-1"})
    assert trace.status is TraceStatus.FAILED and trace.steps[0].status is StepStatus.FAILED
    assert "tool 'pay' is unavailable: circuit open after 2" in (trace.steps[0].error or "")
    clock.advance(60)
    tool.failing = False
    trace = await run(program, tools=tools, context={"order_id": "A-1"})
    assert trace.status is TraceStatus.SUCCESS and trace.steps[0].output == "ok A-1"


@pytest.mark.parametrize(("threshold", "reset"), [(0, 30), (3, 0), (3, -1)])
def test_bad_configuration(clock: ManualClock, threshold: int, reset: float) -> None:
    with pytest.raises(ValueError, match="circuit"):
        CircuitBreakers(threshold, reset, clock=clock)
