"""A Journal decorator that tells a watcher about every step as it is journaled (MCP progress
notifications), forwarding everything to the real journal unchanged."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

from kernel import Journal, StepRecord, Trace

OnStep = Callable[[StepRecord], Awaitable[None]]
logger = logging.getLogger("ledgerflow.gateway")


class StepObserver:
    """The Journal decorator that reports each recorded step to whoever watches its run.

    Forwards every call to the real journal; once `step_recorded` returned (the record durable,
    or waiting to ride in the next commit, see docs/durability.md) it awaits the
    run's watcher, if any. A watcher that fails is logged and ignored: observing a run must not
    change it.
    """

    def __init__(self, journal: Journal) -> None:
        self._journal = journal
        self._watchers: dict[str, OnStep] = {}

    @contextmanager
    def watch(self, trace_id: str, on_step: OnStep | None) -> Iterator[None]:
        if on_step is not None:
            self._watchers[trace_id] = on_step
        try:
            yield
        finally:
            self._watchers.pop(trace_id, None)

    async def run_started(self, trace: Trace, program: dict[str, Any]) -> None:
        await self._journal.run_started(trace, program)

    async def step_recorded(
        self,
        trace: Trace,
        record: StepRecord,
        state_hash: str,
        payload: Any,
        *,
        ends_run: bool = False,
    ) -> None:
        await self._journal.step_recorded(trace, record, state_hash, payload, ends_run=ends_run)
        watcher = self._watchers.get(trace.trace_id)
        if watcher is not None:
            try:
                await watcher(record)
            except Exception:
                logger.exception("step watcher of run %s failed", trace.trace_id)

    async def run_suspended(self, trace: Trace) -> None:
        await self._journal.run_suspended(trace)

    async def run_finished(self, trace: Trace) -> None:
        await self._journal.run_finished(trace)

    async def claim_suspended(self, trace_id: str) -> tuple[dict[str, Any], Trace]:
        return await self._journal.claim_suspended(trace_id)

    async def due_timers(self, now: float) -> list[str]:
        return await self._journal.due_timers(now)

    async def running_runs(self) -> list[tuple[dict[str, Any], Trace]]:
        return await self._journal.running_runs()

    async def load_trace(self, trace_id: str) -> Trace | None:
        return await self._journal.load_trace(trace_id)

    async def claim_run_key(
        self, key: str, fingerprint: str, trace_id: str, now: float, retention: float
    ) -> tuple[str, str] | None:
        return await self._journal.claim_run_key(key, fingerprint, trace_id, now, retention)

    async def event_seen(self, trace_id: str, event_id: str) -> bool:
        return await self._journal.event_seen(trace_id, event_id)

    async def remember_event(self, trace_id: str, event_id: str) -> None:
        await self._journal.remember_event(trace_id, event_id)
