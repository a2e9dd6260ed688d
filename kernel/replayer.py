"""Replay: run a program again on a recorded trace's inputs and check every state hash.

Tool, llm and wait steps are not executed: each takes the outcome recorded for its next
execution (status, output, error, usage), and resume events are fed back where they were
received. Everything the runtime decides is recomputed: conditions, control flow, parallel
blocks, budgets. So replay answers "does this program (or this release of ledgerflow) still make
the same decisions on the same inputs?", and names the first step where it does not.
"""

from __future__ import annotations

from collections import defaultdict, deque
from dataclasses import dataclass

from kernel.budgets import BudgetGuard
from kernel.clock import ManualClock
from kernel.compiler import CompiledStep
from kernel.fsm import Event, successor, transition
from kernel.parallel import execute_block
from kernel.program import Program
from kernel.projection import Projector
from kernel.state import RunState
from kernel.statuses import StepStatus, StepType, TraceStatus
from kernel.steps import Runtime, execute_condition
from kernel.trace import StepRecord, Trace

_STEP_EVENTS = {
    StepStatus.SUCCESS: Event.STEP_DONE,
    StepStatus.SKIPPED: Event.STEP_DONE,
    StepStatus.FAILED: Event.STEP_FAILED,
    StepStatus.SUSPENDED: Event.SUSPEND,
}


@dataclass(frozen=True, slots=True)
class Divergence:
    index: int  # position in the recorded trace's steps
    step_id: str | None
    reason: str


@dataclass(frozen=True, slots=True)
class ReplayReport:
    trace_id: str
    steps_checked: int
    divergence: Divergence | None
    status: TraceStatus

    @property
    def ok(self) -> bool:
        return self.divergence is None


class _Diverged(Exception):
    def __init__(self, divergence: Divergence) -> None:
        super().__init__(divergence.reason)
        self.divergence = divergence


class _Recording:
    """The recorded outcomes, handed out per step in the order they happened."""

    def __init__(self, recorded: Trace) -> None:
        self.recorded = recorded
        self.outcomes: dict[str, deque[StepRecord]] = defaultdict(deque)
        for record in recorded.steps:
            if record.type in (StepType.TOOL, StepType.LLM, StepType.WAIT):
                self.outcomes[record.step_id].append(record)

    def take(self, node: CompiledStep, index: int) -> StepRecord:
        queue = self.outcomes.get(node.id)
        if not queue:
            raise _Diverged(
                Divergence(index, node.id, f"step '{node.id}' ran but has no recorded outcome")
            )
        return queue.popleft()


async def replay(program: Program, recorded: Trace) -> ReplayReport:
    """Replay `recorded` on `program` (which may be a newer version of the recorded one)."""
    replayer = _Replayer(program, recorded)
    try:
        await replayer.drive()
        replayer.check_end()
    except _Diverged as exc:
        return replayer.report(exc.divergence)
    return replayer.report(None)


class _Replayer:
    def __init__(self, program: Program, recorded: Trace) -> None:
        self.program = program
        self.recorded = recorded
        self.recording = _Recording(recorded)
        # Chained from the recorded initial hash: a new program version is compared on the
        # decisions it makes, not on its own hash.
        self.trace = Trace(
            trace_id=recorded.trace_id,
            program_name=program.name,
            program_hash=program.hash,
            started_at=recorded.started_at,
            context=recorded.context,
            initial_hash=recorded.initial_hash,
        )
        track = program.max_stalled_steps is not None
        self.state = RunState(program.compiled, self.trace, track_stalls=track)

    def report(self, divergence: Divergence | None) -> ReplayReport:
        trace = self.trace
        return ReplayReport(trace.trace_id, len(trace.steps), divergence, trace.status)

    async def drive(self) -> None:
        trace, state, recorded = self.trace, self.state, self.recorded
        compiled, guard = self.program.compiled, BudgetGuard.for_program(self.program)
        clock = ManualClock()
        runtime = Runtime({}, None, clock, _no_interrupts, Projector())

        async def fed(child: CompiledStep, _: RunState, __: Runtime) -> StepRecord:
            return self.take(child)

        cursor: str | None = compiled.first
        while cursor is not None:
            if recorded.status is TraceStatus.CANCELLED and len(trace.steps) == len(recorded.steps):
                trace.status = TraceStatus.CANCELLED  # the recording was stopped here
                return
            if guard is not None and guard.check(trace, state.stalled, recorded.started_at):
                trace.status = TraceStatus.BUDGET_EXCEEDED
                return
            node = compiled.steps[cursor]
            trace.metrics.steps_executed += 1
            if node.type is StepType.CONDITION:
                record = await execute_condition(node, state, clock)
            elif node.type is StepType.PARALLEL:
                children, block, _ = await execute_block(node, state, runtime, lambda: None, fed)
                for child in children:
                    self.check(child)
                assert block is not None
                record = block
            else:
                record = self.take(node)
            self.check(record)
            event = _STEP_EVENTS[record.status]
            if event is Event.SUSPEND:
                if not self.resumed_here(node):
                    trace.status = TraceStatus.SUSPENDED  # the recording ends waiting here
                    return
            elif event is not Event.STEP_DONE:
                trace.status = transition(trace.status, event)
                return
            cursor = successor(node, record.output)
        trace.status = transition(trace.status, Event.END)

    def take(self, node: CompiledStep) -> StepRecord:
        record = self.recording.take(node, len(self.trace.steps))
        if record.usage is not None:
            metrics = self.trace.metrics
            metrics.total_tokens += record.usage.total_tokens
            metrics.cost_usd += record.usage.cost_usd or 0.0
        return record

    def resumed_here(self, node: CompiledStep) -> bool:
        """Feed the recorded resume event of this suspension, if the recording has one."""
        index = len(self.trace.steps)
        if index == len(self.recorded.steps):
            return False
        event = self.recorded.steps[index]
        if event.status is not StepStatus.RESUMED or event.step_id != node.id:
            return False
        self.check(event)
        return True

    def check(self, record: StepRecord) -> None:
        index = len(self.trace.steps)
        digest = self.state.record(record)
        recorded = self.recorded
        if index >= len(recorded.steps):
            raise _Diverged(
                Divergence(index, record.step_id, "the replay ran past the end of the recording")
            )
        expected_id = recorded.steps[index].step_id
        if expected_id != record.step_id:
            reason = f"ran step '{record.step_id}' where the recording has step '{expected_id}'"
            raise _Diverged(Divergence(index, record.step_id, reason))
        if digest != recorded.state_hashes[index]:
            reason = (
                f"step '{record.step_id}' reached a different state (status "
                f"{record.status.value}, output {record.output!r})"
            )
            raise _Diverged(Divergence(index, record.step_id, reason))

    def check_end(self) -> None:
        trace, recorded = self.trace, self.recorded
        index = len(trace.steps)
        if index < len(recorded.steps):
            missing = recorded.steps[index].step_id
            reason = f"the replay ended {trace.status.value} before recorded step '{missing}'"
            raise _Diverged(Divergence(index, missing, reason))
        if trace.status is not recorded.status and recorded.status is not TraceStatus.CANCELLED:
            reason = f"the replay ended {trace.status.value}, the recording {recorded.status.value}"
            raise _Diverged(Divergence(index, None, reason))


async def _no_interrupts(*_: object) -> None:
    return None
