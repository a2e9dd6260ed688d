"""The trace: what happened in a run, step by step, with a chained state hash.

Traces are pydantic models and round-trip through JSON exactly. Counters live in `metrics` and are
updated as steps complete, so totals are O(1) to read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from kernel.statuses import StepStatus, StepType, TraceStatus


class Usage(BaseModel):
    """Token usage of one LLM call (or the sum of a step's attempts); cost when known."""

    model_config = ConfigDict(extra="forbid")

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cost_usd: float | None = None


class StepRecord(BaseModel):
    """One execution of one step. Times are Unix seconds from the VM's Clock."""

    model_config = ConfigDict(extra="forbid")

    step_id: str
    type: StepType
    status: StepStatus
    output: Any = None
    error: str | None = None
    attempts: int = 1
    started_at: float = 0.0
    finished_at: float = 0.0
    duration_ms: float = 0.0
    usage: Usage | None = None
    parent: str | None = None
    # Tool steps: the tool called and the arguments it was given (secrets as refs, never
    # their values; injected `ctx`/`idempotency_key` left out).
    tool: str | None = None
    arguments: Any = None

    @classmethod
    def built(
        cls,
        step_id: str,
        type: StepType,
        status: StepStatus,
        output: Any,
        error: str | None,
        attempts: int,
        started_at: float,
        finished_at: float,
        usage: Usage | None = None,
        parent: str | None = None,
        tool: str | None = None,
        arguments: Any = None,
    ) -> StepRecord:
        """A record from values the VM built itself, without re-validating them (hot path).

        Equivalent to the validating constructor for well-typed arguments; a test holds the two
        to the same result.
        """
        record = cls.__new__(cls)
        _set = object.__setattr__
        _set(
            record,
            "__dict__",
            {
                "step_id": step_id,
                "type": type,
                "status": status,
                "output": output,
                "error": error,
                "attempts": attempts,
                "started_at": started_at,
                "finished_at": finished_at,
                "duration_ms": (finished_at - started_at) * 1000.0,
                "usage": usage,
                "parent": parent,
                "tool": tool,
                "arguments": arguments,
            },
        )
        _set(record, "__pydantic_fields_set__", _RECORD_FIELDS)
        _set(record, "__pydantic_extra__", None)
        _set(record, "__pydantic_private__", None)
        return record


# Shared by every record built on the hot path. A set, not a frozenset: pydantic adds a field's
# name on assignment (`record.output = ...`), which is a no-op here since all are present.
_RECORD_FIELDS = set(StepRecord.model_fields)


@dataclass(slots=True)
class Metrics:
    """Run counters, updated in place as steps complete (a plain dataclass: cheap increments)."""

    steps_executed: int = 0
    llm_calls: int = 0
    tool_calls: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cost_usd: float = 0.0


class Trace(BaseModel):
    """A run. `state_hashes[i]` is the chained state hash after `steps[i]` (see kernel.hashing)."""

    model_config = ConfigDict(extra="forbid")

    trace_id: str
    program_name: str
    program_hash: str
    status: TraceStatus = TraceStatus.RUNNING
    steps: list[StepRecord] = Field(default_factory=list)
    final_output: Any = None
    error: str | None = None
    started_at: float = 0.0
    finished_at: float | None = None
    metrics: Metrics = Field(default_factory=Metrics)
    context: dict[str, Any] = Field(default_factory=dict)
    initial_hash: str = ""
    state_hashes: list[str] = Field(default_factory=list)
    cursor: str | None = None
    suspended_step: str | None = None
    wake_at: float | None = None  # when a timer resumes (wait) or expires the suspension

    @classmethod
    def starting(
        cls,
        trace_id: str,
        program_name: str,
        program_hash: str,
        started_at: float,
        context: dict[str, Any],
    ) -> Trace:
        """A new RUNNING trace from values the VM checked itself, without validating them again
        (hot path: once per run). A test holds it to the validating constructor."""
        trace = cls.__new__(cls)
        _set = object.__setattr__
        _set(
            trace,
            "__dict__",
            {
                "trace_id": trace_id,
                "program_name": program_name,
                "program_hash": program_hash,
                "status": TraceStatus.RUNNING,
                "steps": [],
                "final_output": None,
                "error": None,
                "started_at": started_at,
                "finished_at": None,
                "metrics": Metrics(),
                "context": context,
                "initial_hash": "",
                "state_hashes": [],
                "cursor": None,
                "suspended_step": None,
                "wake_at": None,
            },
        )
        _set(trace, "__pydantic_fields_set__", set(_STARTING_FIELDS))
        _set(trace, "__pydantic_extra__", None)
        _set(trace, "__pydantic_private__", None)
        return trace

    def __repr__(self) -> str:
        # Short on purpose: a long run has thousands of records (print `steps` to see them).
        return (
            f"Trace(trace_id={self.trace_id!r}, program={self.program_name!r}, "
            f"status={self.status.value}, steps={len(self.steps)}, error={self.error!r}, "
            f"root_hash={self.root_hash[:16]!r}...)"
        )

    @property
    def root_hash(self) -> str:
        """The last chained state hash (the initial hash before any step ran)."""
        return self.state_hashes[-1] if self.state_hashes else self.initial_hash

    @property
    def state_snapshots(self) -> list[tuple[int, str]]:
        """`state_hashes` in the reference runtime's shape: (step record index, sha256 hex)."""
        return list(enumerate(self.state_hashes))

    def total_tokens(self) -> int:
        return self.metrics.total_tokens

    def total_cost_usd(self) -> float:
        return self.metrics.cost_usd

    def step(self, step_id: str) -> StepRecord:
        """The latest record of `step_id` (KeyError if it never ran)."""
        for record in reversed(self.steps):
            if record.step_id == step_id:
                return record
        raise KeyError(f"step '{step_id}' has no record in trace {self.trace_id}")


# The fields a validating constructor marks as set for a new run (the others are defaults).
_STARTING_FIELDS = frozenset({"trace_id", "program_name", "program_hash", "started_at", "context"})
