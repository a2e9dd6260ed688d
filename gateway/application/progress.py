"""Progress a tool reports while its step runs, on its way to whoever started the run.

The service sets the sink around a run it executes for a caller (`reporting`); a tool that
hears of progress (a downstream MCP tool's notifications) sends it to `step_reporter(step)`. The
sink rides in a context variable, which the tasks the VM starts for the run inherit, so no
tool signature changes. Runs nobody waits on (timers, recovery) have no sink.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from gateway.application.passthrough import ProgressSink

# (step_id, progress, total, message)
OnProgress = Callable[[str, float, float | None, str | None], Awaitable[None]]

_sink: ContextVar[OnProgress | None] = ContextVar("ledgerflow_step_progress", default=None)


@contextmanager
def reporting(on_progress: OnProgress | None) -> Iterator[None]:
    token = _sink.set(on_progress)
    try:
        yield
    finally:
        _sink.reset(token)


def step_reporter(step_id: str) -> ProgressSink | None:
    """Where the progress of step `step_id` goes, taken now: the callback that hears of it may
    run in another task (an MCP client's reader), outside the run's context. None: nowhere."""
    sink = _sink.get()
    if sink is None:
        return None

    async def reporter(progress: float, total: float | None, message: str | None) -> None:
        await sink(step_id, progress, total, message)

    return reporter
