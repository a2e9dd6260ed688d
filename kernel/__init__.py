"""ledgerflow's pure kernel: the Program DSL, its validator, expressions and the FSM that runs it.

Imports only the standard library, pydantic and rfc8785; the outside world comes in through ports
(Journal, Clock, the LLM adapter and tool callables).
"""

from kernel.clock import Clock, ManualClock, SystemClock
from kernel.errors import (
    CanonicalizationError,
    DuplicateEventError,
    ExpressionError,
    IdempotencyError,
    LedgerflowError,
    ProgramError,
    ResumeError,
    SchemaVersionError,
    VMError,
)
from kernel.interrupts import Interrupt, InterruptType
from kernel.journal import InMemoryJournal, Journal
from kernel.llm import LLMAdapter, LLMResult
from kernel.planner import Planner, PlannerError
from kernel.program import Backoff, Program, Step
from kernel.replayer import Divergence, ReplayReport, replay
from kernel.statuses import OnError, OnTimeout, StepStatus, StepType, TraceStatus
from kernel.suspend import PENDING, Suspend
from kernel.trace import Metrics, StepRecord, Trace, Usage
from kernel.validator import Finding, ProgramValidator, Severity, ValidationReport
from kernel.vm import ExecutionVM

__all__ = [
    "PENDING",
    "Backoff",
    "CanonicalizationError",
    "Clock",
    "Divergence",
    "DuplicateEventError",
    "ExecutionVM",
    "ExpressionError",
    "Finding",
    "IdempotencyError",
    "InMemoryJournal",
    "Interrupt",
    "InterruptType",
    "Journal",
    "LLMAdapter",
    "LLMResult",
    "LedgerflowError",
    "ManualClock",
    "Metrics",
    "OnError",
    "OnTimeout",
    "Planner",
    "PlannerError",
    "Program",
    "ProgramError",
    "ProgramValidator",
    "ReplayReport",
    "ResumeError",
    "SchemaVersionError",
    "Severity",
    "Step",
    "StepRecord",
    "StepStatus",
    "StepType",
    "Suspend",
    "SystemClock",
    "Trace",
    "TraceStatus",
    "Usage",
    "VMError",
    "ValidationReport",
    "replay",
]
