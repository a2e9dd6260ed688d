"""Where a run that died while RUNNING picks up again, decided from its trace alone.

The next step is the successor of the last recorded top-level step (the FSM is a pure function of
the program and the records). A parallel block whose children were partly recorded is run again
with those children's records reused, so none of them executes twice and the trace ends up
exactly as an uninterrupted run would have written it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kernel.compiler import CompiledProgram
from kernel.fsm import successor
from kernel.statuses import StepStatus
from kernel.trace import StepRecord, Trace


@dataclass(slots=True)
class ResumePoint:
    cursor: str | None
    failed: StepRecord | None = None  # the run had already failed; only its end was lost
    recorded_children: dict[str, StepRecord] = field(default_factory=dict)


def resume_point(compiled: CompiledProgram, trace: Trace) -> ResumePoint:
    last: StepRecord | None = None
    children: dict[str, StepRecord] = {}
    block: str | None = None
    for record in trace.steps:
        if record.parent is not None:
            if record.parent != block:
                block, children = record.parent, {}
            children[record.step_id] = record
            continue
        last, block, children = record, None, {}
    if block is not None:
        return ResumePoint(block, recorded_children=children)
    if last is None:
        return ResumePoint(compiled.first)
    if last.status is StepStatus.FAILED:
        return ResumePoint(None, failed=last)
    return ResumePoint(successor(compiled.steps[last.step_id], last.output))
