"""OpenTelemetry: a span per run and per step attempt, joined to the caller's trace."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from kernel import ExecutionVM, ManualClock, Program
from kernel.adapters import MockLLMAdapter
from kernel.telemetry import ATTEMPT_SPAN, RUN_SPAN, Telemetry
from tests.conftest import tool

REPO = Path(__file__).resolve().parents[2]


def provider() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    return tracer_provider, exporter


async def test_one_span_per_run_and_per_step_attempt_with_attributes() -> None:
    tracer_provider, exporter = provider()
    calls = iter([ConnectionError("first"), "ok"])

    def flaky() -> Any:
        result = next(calls)
        if isinstance(result, Exception):
            raise result
        return result

    program = Program.from_dict(
        {
            "name": "traced",
            "steps": [
                tool("fetch", tool="flaky", on_error="retry"),
                {"id": "check", "type": "condition", "condition": "$fetch == 'ok'", "then": "ask"},
                {"id": "ask", "type": "llm", "prompt": "one two"},
            ],
        }
    )
    vm = ExecutionVM(
        tools={"flaky": flaky},
        llm=MockLLMAdapter("three"),
        clock=ManualClock(),
        telemetry=Telemetry(tracer_provider),
    )
    trace = await vm.run(program)
    spans = exporter.get_finished_spans()
    run = [s for s in spans if s.name == RUN_SPAN]
    attempts = [s for s in spans if s.name == ATTEMPT_SPAN]
    assert len(run) == 1
    assert run[0].attributes["ledgerflow.trace_id"] == trace.trace_id
    assert run[0].attributes["ledgerflow.status"] == "SUCCESS"
    seen = [
        (
            s.attributes["ledgerflow.step_id"],
            s.attributes["ledgerflow.attempt"],
            s.attributes["ledgerflow.status"],
        )
        for s in attempts
    ]
    assert seen == [
        ("fetch", 1, "FAILED"),
        ("fetch", 2, "SUCCESS"),
        ("check", 1, "SUCCESS"),
        ("ask", 1, "SUCCESS"),
    ]
    assert all(
        s.parent is not None and s.parent.span_id == run[0].context.span_id for s in attempts
    )
    assert attempts[-1].attributes["ledgerflow.tokens"] == 3


async def test_run_joins_the_callers_trace() -> None:
    tracer_provider, exporter = provider()
    tracer = tracer_provider.get_tracer("caller")
    program = Program.from_dict({"name": "p", "steps": [tool("a", tool="noop")]})
    vm = ExecutionVM(tools={"noop": lambda: None}, telemetry=Telemetry(tracer_provider))
    with tracer.start_as_current_span("http request") as caller:
        await vm.run(program)
    run = next(s for s in exporter.get_finished_spans() if s.name == RUN_SPAN)
    assert run.context.trace_id == caller.get_span_context().trace_id


def test_without_telemetry_opentelemetry_is_not_imported() -> None:
    script = (
        "import asyncio, sys\n"
        "from kernel import ExecutionVM, Program\n"
        "steps = [{'id': 'a', 'type': 'tool', 'tool': 't'}]\n"
        "p = Program.from_dict({'name': 'p', 'steps': steps})\n"
        "asyncio.run(ExecutionVM(tools={'t': lambda: 1}).run(p))\n"
        "print(any(m.startswith('opentelemetry') for m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, check=True
    )
    assert out.stdout.strip() == "False"
