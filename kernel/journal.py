"""The Journal port: where a VM writes what it does, and where suspended runs wait.

The VM calls these in order for each run: `run_started`, then `step_recorded` once per step
record (before the next step may see the result), then `run_suspended` or `run_finished`.
`claim_suspended` is the atomic compare-and-set SUSPENDED -> RUNNING of a resume: exactly one
caller gets the run; every other gets ResumeError.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from kernel.errors import ResumeError
from kernel.statuses import TraceStatus
from kernel.trace import StepRecord, Trace


@runtime_checkable
class Journal(Protocol):
    async def run_started(self, trace: Trace, program: dict[str, Any]) -> None: ...

    async def step_recorded(
        self,
        trace: Trace,
        record: StepRecord,
        state_hash: str,
        payload: Any,
        *,
        ends_run: bool = False,
    ) -> None:
        """`payload` is the record's output projected for the journal (refs with commitments,
        never secret values; `Projector.restore_refs` gives the output back). `ends_run`: the
        run finishes or suspends next, with nothing executed in between (a journal may store
        this record with the run's end). A journal without the keyword is called without it."""
        ...

    async def run_suspended(self, trace: Trace) -> None: ...

    async def run_finished(self, trace: Trace) -> None: ...

    async def claim_suspended(self, trace_id: str) -> tuple[dict[str, Any], Trace]:
        """Atomically take a suspended run for resumption: (program data, trace copy)."""
        ...

    async def due_timers(self, now: float) -> list[str]:
        """Suspended runs whose `wake_at` is at or before `now`."""
        ...

    async def running_runs(self) -> list[tuple[dict[str, Any], Trace]]:
        """Runs recorded as RUNNING (for `recover()` after a crash): (program data, trace)."""
        ...

    async def load_trace(self, trace_id: str) -> Trace | None:
        """The run as last journaled (None if unknown)."""
        ...

    async def claim_run_key(
        self, key: str, fingerprint: str, trace_id: str, now: float, retention: float
    ) -> tuple[str, str] | None:
        """Bind an idempotency key to a new run, atomically. Returns None if this caller now owns
        the key, else the (trace id, fingerprint) it is bound to. Keys older than `retention`
        seconds are expired and may be bound again."""
        ...

    async def event_seen(self, trace_id: str, event_id: str) -> bool: ...

    async def remember_event(self, trace_id: str, event_id: str) -> None: ...


class InMemoryJournal:
    """Keeps programs and suspended traces in this process (the VM's default).

    A finished run's trace is kept only when an idempotency key is bound to it (a later call
    with the key gets it back): the caller holds every other one, and a VM that runs for days
    would otherwise hold every trace it ever made (memory, and a garbage collector walking
    them all)."""

    def __init__(self) -> None:
        self.programs: dict[str, dict[str, Any]] = {}
        self._program_of: dict[str, str] = {}
        self._suspended: dict[str, Trace] = {}
        self._finished: dict[str, TraceStatus] = {}
        self._running: dict[str, Trace] = {}
        self._traces: dict[str, Trace] = {}  # finished runs an idempotency key is bound to
        self._keys: dict[str, tuple[str, str, float]] = {}
        self._keyed: set[str] = set()
        self._events: set[tuple[str, str]] = set()

    async def run_started(self, trace: Trace, program: dict[str, Any]) -> None:
        self.programs.setdefault(trace.program_hash, program)
        self._program_of[trace.trace_id] = trace.program_hash
        self._running[trace.trace_id] = trace

    async def step_recorded(
        self,
        trace: Trace,
        record: StepRecord,
        state_hash: str,
        payload: Any,
        *,
        ends_run: bool = False,
    ) -> None:
        return None

    async def run_suspended(self, trace: Trace) -> None:
        # A copy: the caller keeps (and may change) the trace object it was handed.
        self._suspended[trace.trace_id] = trace.model_copy(deep=True)
        self._running.pop(trace.trace_id, None)

    async def run_finished(self, trace: Trace) -> None:
        self._finished[trace.trace_id] = trace.status
        self._running.pop(trace.trace_id, None)
        if trace.trace_id in self._keyed:
            self._traces[trace.trace_id] = trace

    async def due_timers(self, now: float) -> list[str]:
        return [
            tid for tid, t in self._suspended.items() if t.wake_at is not None and t.wake_at <= now
        ]

    async def running_runs(self) -> list[tuple[dict[str, Any], Trace]]:
        return [
            (self.programs[t.program_hash], t.model_copy(deep=True)) for t in self._running.values()
        ]

    async def load_trace(self, trace_id: str) -> Trace | None:
        """A suspended or running run, or a finished one an idempotency key is bound to."""
        trace = (
            self._suspended.get(trace_id)
            or self._running.get(trace_id)
            or self._traces.get(trace_id)
        )
        return None if trace is None else trace.model_copy(deep=True)

    async def claim_run_key(
        self, key: str, fingerprint: str, trace_id: str, now: float, retention: float
    ) -> tuple[str, str] | None:
        bound = self._keys.get(key)
        if bound is not None and now - bound[2] < retention:
            return bound[0], bound[1]
        if bound is not None:
            self._keyed.discard(bound[0])
            self._traces.pop(bound[0], None)  # its key expired: nobody asks for it again
        self._keys[key] = (trace_id, fingerprint, now)
        self._keyed.add(trace_id)
        return None

    async def event_seen(self, trace_id: str, event_id: str) -> bool:
        return (trace_id, event_id) in self._events

    async def remember_event(self, trace_id: str, event_id: str) -> None:
        self._events.add((trace_id, event_id))

    async def claim_suspended(self, trace_id: str) -> tuple[dict[str, Any], Trace]:
        # No await between the check and the pop: atomic on the event loop.
        trace = self._suspended.pop(trace_id, None)
        if trace is None:
            status = self._finished.get(trace_id)
            raise ResumeError(_not_suspended(trace_id, status, trace_id in self._program_of))
        self._running[trace_id] = trace
        return self.programs[trace.program_hash], trace


def _not_suspended(trace_id: str, status: TraceStatus | None, known: bool) -> str:
    if not known:
        return f"unknown run '{trace_id}': nothing to resume"
    if status is None:
        return f"run '{trace_id}' is not suspended (already resumed and still running)"
    return f"run '{trace_id}' is not suspended: it ended {status.value} (already resumed?)"
