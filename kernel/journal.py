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
        self, trace: Trace, record: StepRecord, state_hash: str, payload: Any
    ) -> None:
        """`payload` is the record's output projected for the trace target (no secret values)."""
        ...

    async def run_suspended(self, trace: Trace) -> None: ...

    async def run_finished(self, trace: Trace) -> None: ...

    async def claim_suspended(self, trace_id: str) -> tuple[dict[str, Any], Trace]:
        """Atomically take a suspended run for resumption: (program data, trace copy)."""
        ...


class InMemoryJournal:
    """Keeps programs and suspended traces in this process (the VM's default)."""

    def __init__(self) -> None:
        self.programs: dict[str, dict[str, Any]] = {}
        self._program_of: dict[str, str] = {}
        self._suspended: dict[str, Trace] = {}
        self._finished: dict[str, TraceStatus] = {}

    async def run_started(self, trace: Trace, program: dict[str, Any]) -> None:
        self.programs.setdefault(trace.program_hash, program)
        self._program_of[trace.trace_id] = trace.program_hash

    async def step_recorded(
        self, trace: Trace, record: StepRecord, state_hash: str, payload: Any
    ) -> None:
        return None

    async def run_suspended(self, trace: Trace) -> None:
        # A copy: the caller keeps (and may change) the trace object it was handed.
        self._suspended[trace.trace_id] = trace.model_copy(deep=True)

    async def run_finished(self, trace: Trace) -> None:
        self._finished[trace.trace_id] = trace.status

    async def claim_suspended(self, trace_id: str) -> tuple[dict[str, Any], Trace]:
        # No await between the check and the pop: atomic on the event loop.
        trace = self._suspended.pop(trace_id, None)
        if trace is None:
            raise ResumeError(
                _not_suspended(trace_id, self._finished.get(trace_id), trace_id in self._program_of)
            )
        return self.programs[trace.program_hash], trace


def _not_suspended(trace_id: str, status: TraceStatus | None, known: bool) -> str:
    if not known:
        return f"unknown run '{trace_id}': nothing to resume"
    if status is None:
        return f"run '{trace_id}' is not suspended (already resumed and still running)"
    return f"run '{trace_id}' is not suspended: it ended {status.value} (already resumed?)"
