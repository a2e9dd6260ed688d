"""Executing one step: tool, llm or condition, with on_error, retries, backoff and timeouts.

Each function returns the StepRecord of the execution; the FSM decides what happens next.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from kernel.capability import SecretError
from kernel.clock import Clock
from kernel.compiler import BoundRef, CompiledStep
from kernel.errors import LedgerflowError
from kernel.interrupts import InterruptType
from kernel.llm import LLMAdapter, as_result
from kernel.projection import Projector
from kernel.references import render
from kernel.state import RunState, json_output
from kernel.statuses import OnError, OnTimeout, StepStatus, StepType
from kernel.structured_output import StructuredOutputError, parse_output
from kernel.suspend import suspension_reason
from kernel.telemetry import Telemetry
from kernel.tools import BoundTool, ToolContext
from kernel.trace import StepRecord, Usage

EmitInterrupt = Callable[[InterruptType, str | None, str, str], Awaitable[None]]


@dataclass(slots=True)
class Runtime:
    """The services a step may use; one per VM."""

    tools: dict[str, BoundTool]
    llm: LLMAdapter | None
    clock: Clock
    emit: EmitInterrupt
    projector: Projector
    telemetry: Telemetry | None = None


class OutputMismatch(Exception):
    """The model replied outside what the step allows; `fallback` is used by on_error=skip."""

    def __init__(self, message: str, fallback: Any) -> None:
        super().__init__(message)
        self.fallback = fallback


class FailClosed(Exception):
    """An error no on_error policy may absorb (the run fails)."""


def _describe(exc: BaseException) -> str:
    if isinstance(exc, LedgerflowError | OutputMismatch | FailClosed):
        return str(exc)
    if isinstance(exc, TimeoutError):
        return "timed out"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def execute_condition(node: CompiledStep, state: RunState, clock: Clock) -> StepRecord:
    started = clock.now()
    assert node.condition is not None
    bindings, lookup = node.bindings, state.lookup
    try:
        value = node.condition.evaluate(lambda ref: lookup(bindings[ref]))
    except Exception as exc:
        # A guard that cannot be evaluated must never fall through: fail closed.
        return _record(
            node,
            StepStatus.FAILED,
            None,
            f"condition failed: {_describe(exc)}",
            1,
            started,
            clock.now(),
        )
    return _record(node, StepStatus.SUCCESS, value, None, 1, started, clock.now())


async def execute_call(
    node: CompiledStep, state: RunState, rt: Runtime, *, top_level: bool
) -> StepRecord:
    """Run a tool or llm step under its error policy. Suspension is honoured at top level."""
    if node.type is not StepType.TOOL:
        return await _execute_call(node, state, rt, top_level, None)
    called: dict[str, Any] = {}
    record = await _execute_call(node, state, rt, top_level, called)
    # Straight into the fields (records are built unvalidated, see StepRecord.built): two
    # pydantic assignments less on every tool step.
    fields = record.__dict__
    fields["tool"] = node.step.tool
    fields["arguments"] = called.get("arguments")
    return record


async def _execute_call(
    node: CompiledStep,
    state: RunState,
    rt: Runtime,
    top_level: bool,
    called: dict[str, Any] | None,
) -> StepRecord:
    clock = rt.clock
    started = clock.now()
    metrics = state.trace.metrics
    usage: Usage | None = None
    try:
        if node.type is StepType.TOOL:
            tool = rt.tools.get(node.step.tool or "")
            if tool is None:
                raise FailClosed(f"step '{node.id}': tool '{node.step.tool}' is not registered")
            if node.args is not None:
                kwargs = node.args(state.lookup)
            else:
                kwargs = tool.inject(state.variables)
            if called is not None:  # a copy only where the context is added to kwargs below
                adds_context = tool.wants_ctx or tool.wants_idempotency_key
                called["arguments"] = dict(kwargs) if adds_context else kwargs
            if tool.wants_ctx or tool.wants_idempotency_key:
                _add_call_context(tool, kwargs, node, state)
            if tool.reads_secrets:
                return await _call_secret_tool(node, tool, kwargs, state, rt, started, top_level)
            if (
                node.on_error is not OnError.RETRY
                and node.step.timeout_seconds is None
                and rt.telemetry is None
            ):
                return await _call_tool_once(node, tool, kwargs, state, started, clock, top_level)
            timeout = node.step.timeout_seconds

            def once() -> Awaitable[Any]:
                metrics.tool_calls += 1
                return _call_tool(tool, kwargs, timeout)
        else:
            if rt.llm is None:
                raise FailClosed(f"step '{node.id}': an llm step needs an LLM adapter")
            messages, options = _llm_request(node, state, rt.projector)
            usage = Usage()
            once = _llm_caller(node, rt.llm, messages, options, metrics, usage)
    except (LedgerflowError, FailClosed) as exc:
        # Missing references are an input problem: never retried, never skipped.
        return _record(node, StepStatus.FAILED, None, str(exc), 0, started, clock.now())
    status, output, error, attempts = await _attempts(node, state, rt, once, top_level)
    return _record(node, status, output, error, attempts, started, clock.now(), usage)


def _add_call_context(
    tool: BoundTool, kwargs: dict[str, Any], node: CompiledStep, state: RunState
) -> None:
    trace_id = state.trace.trace_id
    execution = state.executions.get(node.id, 0) + 1
    key = f"{trace_id}:{node.id}:{execution}"
    if tool.wants_idempotency_key:
        kwargs["idempotency_key"] = key
    if tool.wants_ctx:
        kwargs["ctx"] = ToolContext(trace_id, node.id, execution, key)


async def _call_secret_tool(
    node: CompiledStep,
    tool: BoundTool,
    kwargs: dict[str, Any],
    state: RunState,
    rt: Runtime,
    started: float,
    top_level: bool,
) -> StepRecord:
    """A tool that declared it reads secrets: resolve refs in, scrub revealed secrets out."""
    try:
        resolved, revealed = rt.projector.for_tool(kwargs)
    except SecretError as exc:
        message = f"step '{node.id}': {exc}"
        return _record(node, StepStatus.FAILED, None, message, 0, started, rt.clock.now())
    timeout = node.step.timeout_seconds

    def once() -> Awaitable[Any]:
        state.trace.metrics.tool_calls += 1
        return _call_tool(tool, resolved, timeout)

    status, output, error, attempts = await _attempts(node, state, rt, once, top_level)
    if error is not None:
        error = rt.projector.scrub(error, revealed)
    output = rt.projector.scrub(output, revealed)
    return _record(node, status, output, error, attempts, started, rt.clock.now())


async def _call_tool_once(
    node: CompiledStep,
    tool: BoundTool,
    kwargs: dict[str, Any],
    state: RunState,
    started: float,
    clock: Clock,
    top_level: bool,
) -> StepRecord:
    """The common case (no retry, no timeout), kept lean: it is most of a run's steps."""
    state.trace.metrics.tool_calls += 1
    try:
        value = tool.fn(**kwargs)
        if tool.is_async or (value is not None and inspect.isawaitable(value)):
            value = await value
        if value is None:  # the commonest result of a tool with an effect and no answer
            return _record(node, StepStatus.SUCCESS, None, None, 1, started, clock.now())
        status, output = _settle(node, value, top_level)
    except FailClosed as exc:
        return _record(node, StepStatus.FAILED, None, str(exc), 1, started, clock.now())
    except Exception as exc:  # the tool's own failure
        error = f"step '{node.id}': {_describe(exc)}"
        status = StepStatus.SKIPPED if node.on_error is OnError.SKIP else StepStatus.FAILED
        return _record(node, status, None, error, 1, started, clock.now())
    return _record(node, status, output, None, 1, started, clock.now())


def _settle(node: CompiledStep, value: Any, top_level: bool) -> tuple[StepStatus, Any]:
    """A successful call's status and output: a suspension request, or the value as JSON."""
    reason = suspension_reason(value)
    if reason is None:
        return StepStatus.SUCCESS, json_output(value)
    if not top_level:
        raise FailClosed(f"step '{node.id}': tools inside a parallel block cannot suspend")
    return StepStatus.SUSPENDED, reason


async def _traced_attempt(
    telemetry: Telemetry,
    node: CompiledStep,
    state: RunState,
    attempt: int,
    once: Callable[[], Awaitable[Any]],
) -> Any:
    metrics = state.trace.metrics
    tokens_before = metrics.total_tokens
    with telemetry.attempt(state.trace.trace_id, node.id, node.type.value, attempt) as span:
        try:
            value = await once()
        except BaseException:
            telemetry.finish_attempt(span, "FAILED", metrics.total_tokens - tokens_before)
            raise
        status = "SUSPENDED" if suspension_reason(value) is not None else "SUCCESS"
        telemetry.finish_attempt(span, status, metrics.total_tokens - tokens_before)
        return value


async def _attempts(
    node: CompiledStep,
    state: RunState,
    rt: Runtime,
    once: Callable[[], Awaitable[Any]],
    top_level: bool,
) -> tuple[StepStatus, Any, str | None, int]:
    """Call `once` under on_error (retry with backoff, skip, fail) and on_timeout."""
    step = node.step
    max_attempts = step.max_retries if node.on_error is OnError.RETRY else 1
    attempts = 0
    while True:
        attempts += 1
        try:
            if rt.telemetry is None:
                value = await once()
            else:
                value = await _traced_attempt(rt.telemetry, node, state, attempts, once)
            status, output = _settle(node, value, top_level)
            return status, output, None, attempts
        except TimeoutError:
            error = f"step '{node.id}': timed out after {step.timeout_seconds}s"
            await rt.emit(InterruptType.TIMEOUT, node.id, error, state.trace.trace_id)
            if step.on_timeout is OnTimeout.FALLBACK:
                fallback = step.allowed_outputs[0] if step.allowed_outputs else ""
                return StepStatus.SUCCESS, fallback, error + "; used the fallback", attempts
            output = None
        except FailClosed as exc:
            return StepStatus.FAILED, None, str(exc), attempts
        except Exception as exc:  # the tool's or provider's own failure
            error = f"step '{node.id}': {_describe(exc)}"
            output = exc.fallback if isinstance(exc, OutputMismatch) else None
        if attempts < max_attempts:
            state.trace.metrics.retries += 1
            await rt.clock.sleep(step.backoff.delay(attempts))
            continue
        if node.on_error is OnError.SKIP:
            return StepStatus.SKIPPED, output, error, attempts
        return StepStatus.FAILED, None, error, attempts


async def _call_tool(tool: BoundTool, kwargs: dict[str, Any], limit: float | None) -> Any:
    if limit is None:
        result = tool.fn(**kwargs)
        if inspect.isawaitable(result):
            result = await result
        return result
    if tool.is_async:
        return await asyncio.wait_for(tool.fn(**kwargs), limit)
    # A sync tool cannot be interrupted: it runs in a worker thread whose result is discarded
    # if it comes too late.
    return await asyncio.wait_for(asyncio.to_thread(tool.fn, **kwargs), limit)


def _llm_request(
    node: CompiledStep, state: RunState, projector: Projector
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    def lookup(bound: BoundRef) -> Any:
        # Every value is projected before it is rendered into the prompt.
        return projector.for_llm(state.lookup(bound), (bound.name, *bound.path))

    messages: list[dict[str, Any]] = []
    if node.system is not None:
        messages.append({"role": "system", "content": render(node.system(lookup))})
    assert node.prompt is not None
    messages.append({"role": "user", "content": render(node.prompt(lookup))})
    step = node.step
    options: dict[str, Any] = dict(step.options or {})
    if step.model is not None:
        options["model"] = step.model
    if step.temperature is not None:
        options["temperature"] = step.temperature
    return messages, options


def _llm_caller(
    node: CompiledStep,
    llm: LLMAdapter,
    messages: list[dict[str, Any]],
    options: dict[str, Any],
    metrics: Any,
    usage: Usage,
) -> Callable[[], Awaitable[Any]]:
    allowed = node.step.allowed_outputs
    timeout = node.step.timeout_seconds
    schema = node.step.output_schema
    fallback = _typed_fallback(allowed, schema)

    async def once() -> Any:
        metrics.llm_calls += 1
        call = llm.complete(messages, **options)
        reply = as_result(await (asyncio.wait_for(call, timeout) if timeout else call))
        if reply.usage is not None:
            _add_usage(usage, metrics, reply.usage, reply.cost_usd)
        if allowed is None and schema is None:
            return reply.text
        text = reply.text.strip()
        if allowed is not None and text not in allowed:
            raise OutputMismatch(
                f"model replied {text!r}; allowed outputs are {allowed!r}", fallback=fallback
            )
        if schema is None:
            return text
        try:
            return parse_output(text, schema)
        except StructuredOutputError as exc:
            # Same policy as allowed_outputs: skip uses the fallback, retry asks again.
            raise OutputMismatch(str(exc), fallback=fallback) from None

    return once


def _typed_fallback(allowed: list[str] | None, schema: str | dict[str, Any] | None) -> Any:
    """What on_error: skip substitutes: allowed_outputs[0], typed by output_schema if set."""
    if not allowed:
        return None
    if schema is None:
        return allowed[0]
    try:
        return parse_output(allowed[0], schema)
    except StructuredOutputError:
        return None


def _add_usage(usage: Usage, metrics: Any, add: Usage, cost: float | None) -> None:
    usage.prompt_tokens += add.prompt_tokens
    usage.completion_tokens += add.completion_tokens
    usage.total_tokens += add.total_tokens
    metrics.prompt_tokens += add.prompt_tokens
    metrics.completion_tokens += add.completion_tokens
    metrics.total_tokens += add.total_tokens
    cost = cost if cost is not None else add.cost_usd
    if cost is not None:
        usage.cost_usd = (usage.cost_usd or 0.0) + cost
        metrics.cost_usd += cost


def _record(
    node: CompiledStep,
    status: StepStatus,
    output: Any,
    error: str | None,
    attempts: int,
    started: float,
    finished: float,
    usage: Usage | None = None,
) -> StepRecord:
    return StepRecord.built(
        node.id, node.type, status, output, error, attempts, started, finished, usage, node.parent
    )
