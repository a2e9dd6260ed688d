"""Tools that ask for it receive a ToolContext / idempotency key, stable across retries."""

from __future__ import annotations

from typing import Any

from kernel.tools import ToolContext
from tests.conftest import tool


async def test_idempotency_key_is_stable_across_retries_and_new_per_loop_visit(run: Any) -> None:
    keys: list[str] = []
    failures = iter([True, False, False, False])

    def charge(amount: int, idempotency_key: str) -> str:
        keys.append(idempotency_key)
        if next(failures):
            raise ConnectionError("timeout talking to the provider")
        return "charged"

    program = {
        "name": "p",
        "max_steps": 2,
        "steps": [
            tool("pay", tool="charge", args={"amount": 5}, on_error="retry", next_step="pay")
        ],
    }
    trace = await run(program, {"charge": charge})
    tid = trace.trace_id
    assert keys == [f"{tid}:pay:1", f"{tid}:pay:1", f"{tid}:pay:2"]


async def test_ctx_parameter_receives_the_call_context(run: Any) -> None:
    seen: list[ToolContext] = []

    async def notify(ctx: ToolContext) -> None:
        seen.append(ctx)

    trace = await run({"name": "p", "steps": [tool("n", tool="notify")]}, {"notify": notify})
    assert seen == [ToolContext(trace.trace_id, "n", 1, f"{trace.trace_id}:n:1")]


async def test_kwargs_tools_do_not_receive_the_context_unasked(run: Any) -> None:
    seen: dict[str, Any] = {}

    def anything(**kwargs: Any) -> None:
        seen.update(kwargs)

    await run(
        {"name": "p", "steps": [tool("a", tool="anything")]}, {"anything": anything}, {"order": 1}
    )
    assert seen == {"order": 1}
