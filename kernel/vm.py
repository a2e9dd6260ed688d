"""ExecutionVM: drives a program through the FSM, one journaled step at a time."""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from kernel.budgets import BudgetGuard, BudgetVerdict
from kernel.canonical import canonical_json, sha256_hex
from kernel.capability import SecretResolver
from kernel.clock import Clock, SystemClock
from kernel.compiler import WEBHOOK_VARIABLE, CompiledStep
from kernel.errors import (
    DuplicateEventError,
    IdempotencyError,
    ProgramError,
    ResumeError,
    VMError,
)
from kernel.fsm import Event, successor, transition
from kernel.interrupts import Interrupt, InterruptCallback, InterruptType
from kernel.journal import InMemoryJournal, Journal
from kernel.llm import LLMAdapter
from kernel.parallel import execute_block
from kernel.program import Program
from kernel.projection import Projector
from kernel.recovery import resume_point
from kernel.redaction import RedactionRules
from kernel.state import RunState, json_output
from kernel.statuses import StepStatus, StepType, TraceStatus
from kernel.steps import Runtime, execute_call, execute_condition
from kernel.telemetry import Telemetry
from kernel.timers import deadline, timer_event, wait_until
from kernel.tools import Tool, bind_tool, bind_tools
from kernel.trace import StepRecord, Trace
from kernel.validator import ProgramValidator

logger = logging.getLogger("ledgerflow.vm")
T = TypeVar("T")

# Synchronous tools run inline; the VM yields to the event loop once this much time has passed
# since it last did, so a loop of sync tools cannot starve other runs or timers.
YIELD_INTERVAL_SECONDS = 0.002
# How often a call with an idempotency key checks on a run that another process is executing.
IDEMPOTENT_POLL_SECONDS = 0.05

_STEP_EVENTS = {
    StepStatus.SUCCESS: Event.STEP_DONE,
    StepStatus.SKIPPED: Event.STEP_DONE,
    StepStatus.RESUMED: Event.STEP_DONE,
    StepStatus.FAILED: Event.STEP_FAILED,
    StepStatus.SUSPENDED: Event.SUSPEND,
}


class ExecutionVM:
    """Runs programs deterministically: `await vm.run(program, context)`, then `vm.resume(...)`.

    tools: name -> sync or async callable, called with keyword arguments.
    llm: an adapter (`async complete(messages, **options)`); needed only by llm steps.
    journal: where steps, suspensions and ends are recorded (in memory by default).
    clock: wall time and sleeping (retry backoff, budgets); `ManualClock` in tests.
    on_interrupt: awaited with each Interrupt (budget, stall, timeout, suspend) before the run
        stops or suspends.
    id_factory: makes trace ids (uuid4 by default).
    key_retention_seconds: how long a run's idempotency key keeps returning that run.
    secrets: resolves `vault://secret/...` refs for tools marked `@reads_secrets` (the vault).
    redaction: what prompts may not show (defaults: secret-named fields and personal data).
    telemetry: OpenTelemetry spans per run and per step attempt (the `otel` extra).
    """

    def __init__(
        self,
        tools: Mapping[str, Tool] | None = None,
        llm: LLMAdapter | None = None,
        journal: Journal | None = None,
        clock: Clock | None = None,
        *,
        on_interrupt: InterruptCallback | None = None,
        id_factory: Callable[[], str] | None = None,
        key_retention_seconds: float = 7 * 24 * 3600,
        secrets: SecretResolver | None = None,
        redaction: RedactionRules | None = None,
        telemetry: Telemetry | None = None,
    ) -> None:
        self._tools = bind_tools(tools)
        self.llm = llm
        self.journal: Journal = journal if journal is not None else InMemoryJournal()
        self._journals_steps = journal is not None
        # Journals written before `ends_run` existed keep working: it is passed only to those
        # whose step_recorded takes it.
        self._tells_run_end = self._journals_steps and _takes(
            self.journal.step_recorded, "ends_run"
        )
        self.clock: Clock = clock if clock is not None else SystemClock()
        self._on_interrupt = on_interrupt
        self.key_retention = key_retention_seconds
        self._new_id = id_factory if id_factory is not None else random_id
        self._guards: dict[str, BudgetGuard | None] = {}
        self._validated: set[str] = set()
        self._programs: dict[str, Program] = {}
        self._active: dict[str, tuple[asyncio.Task[Any], asyncio.Event]] = {}
        self._cancel_reasons: dict[str, str] = {}
        self._cancelled: dict[str, Trace] = {}
        self.projector = Projector(secrets, redaction)
        self.telemetry = telemetry
        self._runtime = Runtime(self._tools, llm, self.clock, self._emit, self.projector, telemetry)

    @property
    def tools(self) -> Mapping[str, Tool]:
        return {name: bound.fn for name, bound in self._tools.items()}

    def register_tool(self, name: str, fn: Tool) -> None:
        self._tools[name] = bind_tool(name, fn)
        self._validated.clear()

    def _guard(self, program: Program) -> BudgetGuard | None:
        # One per program (budgets are part of the hashed program): not rebuilt every run.
        try:
            return self._guards[program.hash]
        except KeyError:
            guard = self._guards[program.hash] = BudgetGuard.for_program(program)
            return guard

    def validate(self, program: Program) -> None:
        """Raise ProgramError if `program` cannot run on this VM (unknown tools, no adapter...)."""
        if program.hash in self._validated:
            return
        report = ProgramValidator(tools=self._tools, llm=self.llm is not None).validate(program)
        if not report.ok:
            problems = [str(f) for f in report.errors]
            raise ProgramError(
                f"program '{program.name}' is not valid: " + "; ".join(problems), problems
            )
        self._validated.add(program.hash)

    async def run(
        self,
        program: Program,
        context: Mapping[str, Any] | None = None,
        *,
        trace_id: str | None = None,
        idempotency_key: str | None = None,
    ) -> Trace:
        """Run `program` from its first step; returns the trace (SUSPENDED runs can be resumed).

        With `idempotency_key`, the first call starts the run and any later or concurrent call
        with the same key, program and context returns that run's trace (waiting while it is
        running); the same key with another program or context raises IdempotencyError.
        """
        self.validate(program)
        ctx = self.check_context(program, context)
        self._programs[program.hash] = program
        trace_id = trace_id or self._new_id()
        if idempotency_key is not None:
            fingerprint = sha256_hex(canonical_json([program.hash, ctx]))
            bound = await self.journal.claim_run_key(
                idempotency_key, fingerprint, trace_id, self.clock.now(), self.key_retention
            )
            if bound is not None:
                return await self._existing_run(idempotency_key, fingerprint, *bound)
        trace = Trace.starting(trace_id, program.name, program.hash, self.clock.now(), ctx)
        state = RunState.start(
            program.compiled, trace, track_stalls=program.max_stalled_steps is not None
        )
        await self.journal.run_started(trace, program.data)
        return await self._drive_traced(program, state, program.compiled.first, resumed=False)

    async def resume(
        self, trace_id: str, event: Any = None, *, event_id: str | None = None
    ) -> Trace:
        """Continue a suspended run: `event` becomes the suspended step's output.

        The program comes from the journal. Exactly one resume per suspension succeeds; any
        other raises ResumeError and changes nothing. With `event_id`, an event delivered again
        raises DuplicateEventError (a ResumeError): acknowledge it, nothing runs twice.
        """
        journal = self.journal
        if event_id is not None and await journal.event_seen(trace_id, event_id):
            raise DuplicateEventError(f"event '{event_id}' was already delivered to '{trace_id}'")
        try:
            program_data, trace = await journal.claim_suspended(trace_id)
        except ResumeError:
            if event_id is not None and await journal.event_seen(trace_id, event_id):
                raise DuplicateEventError(
                    f"event '{event_id}' was already delivered to '{trace_id}'"
                ) from None
            raise
        program = await self._claimed_program(trace, program_data)
        if event_id is not None:
            # Remembered once the claim is ours: a crash before this leaves the run to be
            # claimed again by a retried delivery rather than lost as a "duplicate".
            await journal.remember_event(trace_id, event_id)
        return await self._continue(program, trace, event)

    async def _claimed_program(self, trace: Trace, program_data: Mapping[str, Any]) -> Program:
        """The program of a run just claimed; if this VM cannot run it (a tool or the LLM
        adapter is missing), the claim is given back and the run stays suspended."""
        try:
            program = self._program_for(trace.program_hash, program_data)
            self.validate(program)
        except (ProgramError, ResumeError):
            await self.journal.run_suspended(trace)
            raise
        return program

    async def _existing_run(
        self, key: str, fingerprint: str, trace_id: str, bound_fingerprint: str
    ) -> Trace:
        if bound_fingerprint != fingerprint:
            raise IdempotencyError(
                f"idempotency key '{key}' belongs to run '{trace_id}', started with another "
                "program or context"
            )
        active = self._active.get(trace_id)
        if active is not None:
            await active[1].wait()
        while True:
            trace = await self.journal.load_trace(trace_id)
            if trace is not None and trace.status is not TraceStatus.RUNNING:
                return trace
            # Running elsewhere (another VM or process): wait for it to journal an outcome.
            await self.clock.sleep(IDEMPOTENT_POLL_SECONDS)

    async def resume_with_program(
        self, program: Program, trace_id: str, webhook_event: Any = None
    ) -> Trace:
        """The reference runtime's form of `resume`; refuses a program other than the run's."""
        _, trace = await self.journal.claim_suspended(trace_id)
        if program.hash != trace.program_hash:
            await self.journal.run_suspended(trace)  # give the claim back untouched
            raise ResumeError(
                f"run '{trace_id}' was started with program hash {trace.program_hash}, "
                f"not {program.hash}: resume with the program it started with"
            )
        return await self._continue(program, trace, webhook_event)

    async def fire_due_timers(self) -> list[Trace]:
        """Act on every suspended run whose timer is due: wake `wait` steps, and expire
        suspensions past their deadline (fail, or continue with `{"timeout": true}`).

        A run resumed by an event first is skipped: the claim is the same compare-and-set.
        """
        fired: list[Trace] = []
        for trace_id in await self.journal.due_timers(self.clock.now()):
            trace = await self.fire_timer(trace_id)
            if trace is not None:
                fired.append(trace)
        return fired

    async def fire_timer(self, trace_id: str) -> Trace | None:
        """Act on the due timer of one suspended run; None if another caller claimed it first
        (an event, or another process firing the same timer)."""
        try:
            program_data, trace = await self.journal.claim_suspended(trace_id)
        except ResumeError:
            return None
        program = await self._claimed_program(trace, program_data)
        assert trace.suspended_step is not None and trace.wake_at is not None
        node = program.compiled.steps[trace.suspended_step]
        event = timer_event(node, trace.wake_at)
        if event is not None:
            return await self._continue(program, trace, event)
        return await self._expire(program, trace, node)

    async def run_timers(self, interval_seconds: float = 1.0) -> None:
        """Fire due timers every `interval_seconds` until cancelled (the gateway runs this)."""
        while True:
            try:
                await self.fire_due_timers()
            except Exception:
                logger.exception("timer loop: firing due timers failed; retrying")
            await self.clock.sleep(interval_seconds)

    async def cancel(self, trace_id: str, reason: str = "cancelled") -> Trace:
        """Move a RUNNING (in this VM) or SUSPENDED run to CANCELLED and return its trace.

        A running step is interrupted at its next await; nothing after it runs.
        """
        active = self._active.get(trace_id)
        if active is not None:
            task, done = active
            self._cancel_reasons[trace_id] = reason
            task.cancel()
            await done.wait()
            return self._cancelled.pop(trace_id)
        try:
            program_data, trace = await self.journal.claim_suspended(trace_id)
        except ResumeError as exc:
            raise VMError(f"cannot cancel: {exc}") from None
        program = self._program_for(trace.program_hash, program_data)
        state = RunState.restore(program.compiled, trace)
        trace.status = transition(trace.status, Event.CANCEL)
        trace.cursor = trace.wake_at = None
        return await self._finish(state, f"cancelled: {reason}")

    async def recover(self) -> list[Trace]:
        """Continue every run the journal holds as RUNNING (its process died).

        Completed steps are not executed again: their recorded outputs are reused. The step that
        was in flight has no record, so it runs again: at-least-once for that step, which is
        why tools get an idempotency key that is the same on the re-run.
        """
        return [
            await self.recover_run(program_data, trace)
            for program_data, trace in await self.journal.running_runs()
        ]

    async def recover_run(self, program_data: Mapping[str, Any], trace: Trace) -> Trace:
        """Continue one run as `recover` does, given what `journal.running_runs()` returned for
        it: for a caller that recovers runs side by side, or must go on when one of them
        cannot run here (ProgramError: a tool or the model is missing)."""
        program = self._program_for(trace.program_hash, program_data)
        self.validate(program)
        state = RunState.restore(
            program.compiled, trace, track_stalls=program.max_stalled_steps is not None
        )
        point = resume_point(program.compiled, trace)
        if point.failed is not None:
            trace.status = transition(trace.status, Event.STEP_FAILED)
            return await self._finish(state, point.failed.error)
        state.recorded_children = point.recorded_children
        return await self._drive_traced(program, state, point.cursor, resumed=True)

    async def _expire(self, program: Program, trace: Trace, node: CompiledStep) -> Trace:
        state = RunState.restore(program.compiled, trace)
        now = self.clock.now()
        error = f"step '{node.id}': no event within {node.step.suspend_timeout_seconds}s"
        record = StepRecord.built(node.id, node.type, StepStatus.FAILED, None, error, 1, now, now)
        trace.status = transition(trace.status, Event.EXPIRE)
        trace.cursor = trace.suspended_step = trace.wake_at = None
        await self._record(state, record)
        await self._emit(InterruptType.TIMEOUT, node.id, error, trace.trace_id)
        return await self._finish(state, error)

    async def _continue(self, program: Program, trace: Trace, event: Any) -> Trace:
        self.validate(program)
        suspended_step, cursor = trace.suspended_step, trace.cursor
        if suspended_step is None:
            raise ResumeError(f"run '{trace.trace_id}' has no suspended step")
        state = RunState.restore(
            program.compiled, trace, track_stalls=program.max_stalled_steps is not None
        )
        trace.status = transition(trace.status, Event.RESUME)
        trace.cursor = trace.suspended_step = None
        trace.wake_at = None
        node = program.compiled.steps[suspended_step]
        now = self.clock.now()
        record = StepRecord(
            step_id=suspended_step,
            type=node.type,
            status=StepStatus.RESUMED,
            output=json_output(event),
            started_at=now,
            finished_at=now,
        )
        await self._record(state, record)
        return await self._drive_traced(program, state, cursor, resumed=True)

    def _program_for(self, program_hash: str, data: Mapping[str, Any]) -> Program:
        program = self._programs.get(program_hash)
        if program is None:
            program = Program.from_dict(dict(data))
            if program.hash != program_hash:
                raise ResumeError(f"journal holds a program whose hash is not {program_hash}")
            self._programs[program_hash] = program
        return program

    def check_context(self, program: Program, context: Mapping[str, Any] | None) -> dict[str, Any]:
        """The context as the run will hold it; ProgramError if a key shadows a step id or an
        output_key, or a value has no JSON form. `run` calls it; call it first to check a
        context before acting on it (e.g. before sealing its secrets into a vault)."""
        if context is None:
            return {}
        if not isinstance(context, Mapping):
            raise ProgramError(f"context must be a mapping, got {type(context).__name__}")
        compiled = program.compiled
        problems = []
        for key in context:
            if not isinstance(key, str):
                problems.append(f"context key {key!r} is not a string")
            elif key in compiled.steps:
                problems.append(f"context key '{key}' is also a step id (it would shadow it)")
            elif key in compiled.output_keys:
                problems.append(
                    f"context key '{key}' is the output_key of step "
                    f"'{compiled.output_keys[key]}' (a context value must not stand in for it)"
                )
            elif key == WEBHOOK_VARIABLE:
                problems.append(f"context key '{key}' is reserved for resume events")
        if problems:
            raise ProgramError("invalid context: " + "; ".join(problems), problems)
        try:
            return dict(json_output(dict(context)))
        except ValueError as exc:
            raise ProgramError(f"invalid context: {exc}") from None

    async def _drive_traced(
        self, program: Program, state: RunState, cursor: str | None, *, resumed: bool
    ) -> Trace:
        trace_id = state.trace.trace_id
        task = asyncio.current_task()
        assert task is not None
        done = asyncio.Event()
        self._active[trace_id] = (task, done)
        try:
            return await self._drive_observed(program, state, cursor, resumed=resumed)
        except asyncio.CancelledError:
            reason = self._cancel_reasons.pop(trace_id, None)
            if reason is None:
                raise  # not ours: the caller cancelled its own task
            task.uncancel()
            trace = state.trace
            trace.status = transition(TraceStatus.RUNNING, Event.CANCEL)
            trace.cursor = trace.suspended_step = trace.wake_at = None
            self._cancelled[trace_id] = await self._finish(state, f"cancelled: {reason}")
            return trace
        finally:
            del self._active[trace_id]
            done.set()

    async def _drive_observed(
        self, program: Program, state: RunState, cursor: str | None, *, resumed: bool
    ) -> Trace:
        if self.telemetry is None:
            return await self._drive(program, state, cursor)
        trace = state.trace
        with self.telemetry.run(trace.trace_id, program.name, program.hash, resumed) as span:
            result = await self._drive(program, state, cursor)
            self.telemetry.finish_run(span, result.status.value, result.error)
            return result

    async def _drive(self, program: Program, state: RunState, cursor: str | None) -> Trace:
        trace = state.trace
        steps = program.compiled.steps
        guard = self._guard(program)
        clock = self.clock
        runtime = self._runtime
        metrics = trace.metrics
        traced, journals = self.telemetry is not None, self._journals_steps
        last_yield = time.perf_counter()
        while cursor is not None:
            if guard is not None:
                verdict = guard.check(trace, state.stalled, clock.now())
                if verdict is not None:
                    return await self._stop(state, verdict, cursor)
            node = steps[cursor]
            metrics.steps_executed += 1
            if node.type is StepType.CONDITION:
                execution = execute_condition(node, state, clock)
                if traced:
                    record = await self._traced(node, state, execution)
                else:
                    record = await execution
            elif node.type is StepType.PARALLEL:
                block_run = execute_block(node, state, runtime, _budget_check(guard, state, clock))
                children, block, verdict = await self._traced(node, state, block_run)
                for child in children:
                    if state.recorded_children.pop(child.step_id, None) is None:
                        await self._record(state, child)
                if block is None:
                    assert verdict is not None
                    return await self._stop(state, verdict, cursor)
                record = block
            elif node.type is StepType.WAIT:
                record = self._wait(node, state)
            else:
                record = await execute_call(node, state, runtime, top_level=True)
            event = _STEP_EVENTS[record.status]
            following = successor(node, record.output) if event is Event.STEP_DONE else None
            if journals:
                await self._record(state, record, ends_run=following is None)
            else:
                state.record(record)  # what _record does without a journal, one coroutine less
            if event is not Event.STEP_DONE:
                trace.status = transition(trace.status, event)
                if event is Event.SUSPEND:
                    return await self._suspend(state, node, successor(node, record.output))
                return await self._finish(state, record.error)
            cursor = following
            now = time.perf_counter()
            if now - last_yield > YIELD_INTERVAL_SECONDS:
                await _yield()
                last_yield = time.perf_counter()
        trace.status = transition(trace.status, Event.END)
        return await self._finish(state, None)

    async def _traced(self, node: CompiledStep, state: RunState, execution: Awaitable[T]) -> T:
        """Await a condition or a parallel block inside its own span when telemetry is on (tool
        and llm attempts get theirs in kernel.steps)."""
        if self.telemetry is None:
            return await execution
        trace_id = state.trace.trace_id
        with self.telemetry.attempt(trace_id, node.id, node.type.value, 1) as span:
            result = await execution
            record = result[1] if isinstance(result, tuple) else result
            if isinstance(record, StepRecord):
                self.telemetry.finish_attempt(span, record.status.value)
            return result

    async def _record(self, state: RunState, record: StepRecord, ends_run: bool = False) -> None:
        """Journal `record`; `ends_run`: the run ends or suspends right after it, nothing
        executed between (the journal may then store the two together)."""
        digest = state.record(record)
        if self._journals_steps:
            payload = self.projector.for_journal(record.output)
            if self._tells_run_end:
                await self.journal.step_recorded(
                    state.trace, record, digest, payload, ends_run=ends_run
                )
            else:
                await self.journal.step_recorded(state.trace, record, digest, payload)

    async def _stop(self, state: RunState, verdict: BudgetVerdict, cursor: str) -> Trace:
        trace = state.trace
        await self._emit(verdict.interrupt, cursor, verdict.detail, trace.trace_id)
        trace.status = transition(trace.status, verdict.event)
        return await self._finish(state, f"stopped before step '{cursor}': {verdict.detail}")

    def _wait(self, node: CompiledStep, state: RunState) -> StepRecord:
        now = self.clock.now()
        state.trace.wake_at = wait_until(node, now)
        output = {"wake_at": state.trace.wake_at}
        return StepRecord.built(node.id, node.type, StepStatus.SUSPENDED, output, None, 1, now, now)

    async def _suspend(self, state: RunState, node: CompiledStep, cursor: str | None) -> Trace:
        trace = state.trace
        trace.suspended_step, trace.cursor = node.id, cursor
        if node.type is not StepType.WAIT:
            trace.wake_at = deadline(node, self.clock.now())
        await self._emit(InterruptType.SUSPEND, node.id, "waiting for an event", trace.trace_id)
        await self.journal.run_suspended(trace)
        return trace

    async def _finish(self, state: RunState, error: str | None) -> Trace:
        trace = state.trace
        trace.error = error
        trace.finished_at = self.clock.now()
        if trace.status is TraceStatus.SUCCESS and trace.steps:
            trace.final_output = trace.steps[-1].output
        await self.journal.run_finished(trace)
        return trace

    async def _emit(
        self, kind: InterruptType, step_id: str | None, detail: str, trace_id: str = ""
    ) -> None:
        try:
            await self._emit_interrupt(kind)
            if self._on_interrupt is not None:
                await self._on_interrupt(Interrupt(kind, trace_id, step_id, detail))
        except Exception:
            # An observer must not change the outcome of a run.
            logger.exception("interrupt handler failed for %s at step %s", kind.value, step_id)

    async def _emit_interrupt(self, interrupt_type: InterruptType) -> None:
        """Hook for subclasses (the reference runtime's extension point); does nothing here."""


def _budget_check(
    guard: BudgetGuard | None, state: RunState, clock: Clock
) -> Callable[[], BudgetVerdict | None]:
    if guard is None:
        return lambda: None
    return lambda: guard.check(state.trace, state.stalled, clock.now())


async def _yield() -> None:
    await asyncio.sleep(0)


def _takes(method: Callable[..., Any], keyword: str) -> bool:
    try:
        return keyword in inspect.signature(method).parameters
    except (TypeError, ValueError):  # no signature to read (a C or odd callable)
        return False


def random_id() -> str:
    """A random (version 4) UUID as `str(uuid.uuid4())` writes it, without the UUID object
    (a third of a short in-memory run's fixed cost)."""
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40  # version 4
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
