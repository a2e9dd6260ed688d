"""OpenTelemetry spans (the `otel` extra): one span per run, one per step attempt.

`ExecutionVM(telemetry=Telemetry())` turns it on. Spans are started in the caller's current
context, so a run started inside a caller's span joins that caller's OpenTelemetry trace. Without
a Telemetry object nothing here is imported or called; opentelemetry itself is imported only
when a Telemetry is created.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

RUN_SPAN = "ledgerflow.run"
ATTEMPT_SPAN = "ledgerflow.step"


class Telemetry:
    def __init__(self, tracer_provider: Any = None) -> None:
        try:
            from opentelemetry import trace
        except ImportError as exc:
            raise ImportError(
                "telemetry needs OpenTelemetry: pip install 'ledgerflow[otel]'"
            ) from exc
        self._trace = trace
        self._tracer = trace.get_tracer("ledgerflow", tracer_provider=tracer_provider)

    @contextmanager
    def run(self, trace_id: str, program: str, program_hash: str, resumed: bool) -> Iterator[Any]:
        with self._tracer.start_as_current_span(RUN_SPAN) as span:
            span.set_attribute("ledgerflow.trace_id", trace_id)
            span.set_attribute("ledgerflow.program", program)
            span.set_attribute("ledgerflow.program_hash", program_hash)
            span.set_attribute("ledgerflow.resumed", resumed)
            yield span

    @staticmethod
    def finish_run(span: Any, status: str, error: str | None) -> None:
        span.set_attribute("ledgerflow.status", status)
        if error:
            span.set_attribute("ledgerflow.error", error)

    @contextmanager
    def attempt(self, trace_id: str, step_id: str, step_type: str, attempt: int) -> Iterator[Any]:
        with self._tracer.start_as_current_span(ATTEMPT_SPAN) as span:
            span.set_attribute("ledgerflow.trace_id", trace_id)
            span.set_attribute("ledgerflow.step_id", step_id)
            span.set_attribute("ledgerflow.step_type", step_type)
            span.set_attribute("ledgerflow.attempt", attempt)
            yield span

    @staticmethod
    def finish_attempt(span: Any, status: str, tokens: int | None = None) -> None:
        span.set_attribute("ledgerflow.status", status)
        if tokens is not None:
            span.set_attribute("ledgerflow.tokens", tokens)
