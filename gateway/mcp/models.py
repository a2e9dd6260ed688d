"""The structured outputs of the MCP tools: pydantic models, so the SDK publishes their schemas.

No `from __future__ import annotations`: the SDK evaluates these annotations at run time.
"""

import datetime as dt
from typing import Any, Literal

from pydantic import Field

from gateway.application.program_registry import SavedProgram
from gateway.application.service import ProgramCheck
from gateway.mcp.flat_schema import FlatSchemaModel
from governance import GovernanceEnvelope
from kernel import StepRecord, StepStatus, StepType, Trace, TraceStatus


def as_time(seconds: float) -> dt.datetime:
    """A Clock reading (Unix seconds) as an aware UTC datetime."""
    return dt.datetime.fromtimestamp(seconds, dt.UTC)


class StepView(FlatSchemaModel):
    step_id: str
    type: StepType
    status: StepStatus
    output: Any = None
    error: str | None = None
    attempts: int
    duration_ms: float
    parent: str | None = Field(None, description="The parallel block of a child step")

    @classmethod
    def of(cls, record: StepRecord) -> "StepView":
        return cls(
            step_id=record.step_id,
            type=record.type,
            status=record.status,
            output=record.output,
            error=record.error,
            attempts=record.attempts,
            duration_ms=round(record.duration_ms, 3),
            parent=record.parent,
        )


class MetricsView(FlatSchemaModel):
    steps_executed: int
    llm_calls: int
    tool_calls: int
    retries: int
    total_tokens: int
    cost_usd: float


class TraceView(FlatSchemaModel):
    """A run as recorded. Secrets show as {"$ref", "commitment"}, erased ones as tombstones."""

    trace_id: str
    program_name: str
    program_hash: str
    status: TraceStatus
    steps: list[StepView]
    final_output: Any = None
    error: str | None = None
    context: dict[str, Any]
    started_at: dt.datetime
    finished_at: dt.datetime | None = None
    cursor: str | None = Field(None, description="A suspended run's next step")
    suspended_step: str | None = None
    wake_at: dt.datetime | None = Field(None, description="When a timer acts on the suspension")
    metrics: MetricsView
    root_hash: str = Field(description="The last chained state hash")

    @classmethod
    def of(cls, trace: Trace) -> "TraceView":
        m = trace.metrics
        return cls(
            trace_id=trace.trace_id,
            program_name=trace.program_name,
            program_hash=trace.program_hash,
            status=trace.status,
            steps=[StepView.of(r) for r in trace.steps],
            final_output=trace.final_output,
            error=trace.error,
            context=trace.context,
            started_at=as_time(trace.started_at),
            finished_at=None if trace.finished_at is None else as_time(trace.finished_at),
            cursor=trace.cursor,
            suspended_step=trace.suspended_step,
            wake_at=None if trace.wake_at is None else as_time(trace.wake_at),
            metrics=MetricsView(
                steps_executed=m.steps_executed,
                llm_calls=m.llm_calls,
                tool_calls=m.tool_calls,
                retries=m.retries,
                total_tokens=m.total_tokens,
                cost_usd=m.cost_usd,
            ),
            root_hash=trace.root_hash,
        )


class RunView(FlatSchemaModel):
    trace_id: str
    program_name: str
    program_hash: str
    status: TraceStatus
    started_at: dt.datetime
    updated_at: dt.datetime
    error: str | None = None


class TracePage(FlatSchemaModel):
    traces: list[RunView]
    next_cursor: str | None = None


class ProgramView(FlatSchemaModel):
    name: str
    version: int
    hash: str = Field(description="The program hash that runs of this version record")
    saved_at: dt.datetime
    retired: bool = Field(description="Deleted: no new runs; history stays")

    @classmethod
    def of(cls, saved: SavedProgram) -> "ProgramView":
        return cls(
            name=saved.name,
            version=saved.version,
            hash=saved.hash,
            saved_at=saved.saved_at,
            retired=saved.retired,
        )


class ProgramVersion(ProgramView):
    program: dict[str, Any]


class ProgramList(FlatSchemaModel):
    programs: list[ProgramView]


class ValidationResult(FlatSchemaModel):
    valid: bool
    program_name: str | None = None
    program_hash: str | None = None
    errors: list[str]
    warnings: list[str]

    @classmethod
    def of(cls, check: ProgramCheck) -> "ValidationResult":
        return cls(
            valid=check.ok,
            program_name=check.program_name,
            program_hash=check.program_hash,
            errors=check.errors,
            warnings=check.warnings,
        )


class EnvelopePage(FlatSchemaModel):
    envelopes: list[GovernanceEnvelope]
    next_cursor: str | None = None


class ProofBundle(FlatSchemaModel):
    """Self-contained: `ledgerflow verify-proof` checks it with the verifier key alone."""

    format: str
    origin: str
    envelope: GovernanceEnvelope
    leaf_index: int
    tree_size: int
    inclusion_proof: list[str]
    checkpoint: str = Field(description="The signed checkpoint note")
    consistency: dict[str, Any] | None = Field(
        None,
        description="With since_size: {old_size, proof}, a consistency proof from your "
        "checkpoint to this one (proof null when the log is now smaller: a rollback)",
    )


class ConsistencyBundle(FlatSchemaModel):
    """Checked offline with `ledgerflow verify-consistency` against a checkpoint note."""

    format: str
    origin: str
    old_size: int
    new_size: int
    consistency_proof: list[str] | None = Field(
        description="Base64 hashes; null when the ledger is smaller than old_size (a rollback)"
    )
    checkpoint: str = Field(description="The ledger's latest signed checkpoint note")


class VerifyResult(FlatSchemaModel):
    ok: bool
    entries_checked: int
    checkpoints_checked: int
    first_bad_seq: int | None = None
    bad_checkpoint: int | None = None
    reason: str | None = None
    keys: Literal["given", "stored"]
    verifier_keys: list[str] = Field(description="This ledger's checkpoint verifier keys")


class ErasureResult(FlatSchemaModel):
    request_id: str
    subject_hash: str = Field(description="SHA-256 of the subject id (the id is not kept)")
    refs_erased: list[str]
    erased_at: dt.datetime
