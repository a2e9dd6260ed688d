"""Plain-text rendering of a Trace for people (the `--json` form is for programs)."""

from __future__ import annotations

import datetime as dt
import json
import shlex
from typing import Any

from governance.storage.database_url import DatabaseUrl
from kernel import StepRecord, StepStatus, Trace, TraceStatus

STEP_OUTPUT_LIMIT = 80
FINAL_OUTPUT_LIMIT = 500
_LABEL_WIDTH = 14


def format_trace(trace: Trace) -> str:
    """Header, one line per step record, the suspension (if any), the outcome and the metrics."""
    lines = _header(trace)
    lines += ["", f"steps ({len(trace.steps)})"]
    lines += _step_lines(trace.steps)
    lines.append("")
    if trace.status is TraceStatus.SUSPENDED:
        lines += _suspension(trace)
    lines += _outcome(trace)
    return "\n".join(lines)


def compact(value: Any, limit: int | None = STEP_OUTPUT_LIMIT) -> str:
    """One-line JSON of `value`, cut to `limit` characters with '...' when longer."""
    text = json.dumps(value, ensure_ascii=False, separators=(", ", ": "), default=repr)
    if limit is not None and len(text) > limit:
        return text[: limit - 3] + "..."
    return text


def _field(label: str, value: str) -> str:
    return f"{label:<{_LABEL_WIDTH}}{value}"


def _header(trace: Trace) -> list[str]:
    return [
        _field("program", trace.program_name),
        _field("trace", trace.trace_id),
        _field("status", trace.status.value),
        _field("duration", _ms(_run_seconds(trace) * 1000.0)),
    ]


def _run_seconds(trace: Trace) -> float:
    """Wall time of the run so far; a suspended run has no finish time, so use its last step."""
    end = trace.finished_at
    if end is None:
        end = max((r.finished_at for r in trace.steps), default=trace.started_at)
    return max(end - trace.started_at, 0.0)


def _step_lines(records: list[StepRecord]) -> list[str]:
    if not records:
        return ["  (no step ran)"]
    rows = _block_first(records)
    width = max(len(name) for name, _ in rows)
    return [_step_line(name, record, width) for name, record in rows]


def _block_first(records: list[StepRecord]) -> list[tuple[str, StepRecord]]:
    """(display name, record) with each parallel block's children listed, indented, under it.

    The trace records children before their block; people read the block first.
    """
    rows: list[tuple[str, StepRecord]] = []
    waiting: dict[str, list[StepRecord]] = {}
    for record in records:
        if record.parent is not None:
            waiting.setdefault(record.parent, []).append(record)
            continue
        rows.append((record.step_id, record))
        rows += [("  " + child.step_id, child) for child in waiting.pop(record.step_id, [])]
    # A block stopped by a budget has no record of its own: show its children anyway.
    for children in waiting.values():
        rows += [("  " + child.step_id, child) for child in children]
    return rows


def _step_line(name: str, record: StepRecord, width: int) -> str:
    parts = [
        f"  {name:<{width}}",
        f"{record.type.value:<9}",
        f"{record.status.value:<9}",
        f"{_ms(record.duration_ms):>9}",
    ]
    if record.attempts > 1:
        parts.append(f"{record.attempts} attempts")
    if record.output is not None or record.status is StepStatus.SUCCESS:
        parts.append(compact(record.output))
    if record.error:
        parts.append("error: " + " ".join(record.error.split()))  # keep one line per record
    return "  ".join(parts)


def _suspension(trace: Trace) -> list[str]:
    step = trace.suspended_step
    cursor = f"step '{trace.cursor}'" if trace.cursor else "nothing (the run ends with the event)"
    return [
        _field("waiting", f"step '{step}' waits for an external event"),
        _field("cursor", f"{cursor} runs next, once the event arrives"),
        _field("resume", f"in Python: await vm.resume('{trace.trace_id}', event)"),
        _field("", f"on the VM holding this run; the event becomes the output of '{step}'."),
        _field("", "This command keeps runs in memory only: the run ends with the command."),
        "",
    ]


def _outcome(trace: Trace) -> list[str]:
    metrics = trace.metrics
    final = compact(trace.final_output, None)
    if len(final) > FINAL_OUTPUT_LIMIT:
        final = compact(trace.final_output, FINAL_OUTPUT_LIMIT) + " (cut; --json prints all)"
    return [
        _field("final output", final),
        _field("error", trace.error or "-"),
        _field(
            "metrics",
            f"steps {metrics.steps_executed}, tool calls {metrics.tool_calls}, "
            f"llm calls {metrics.llm_calls}, retries {metrics.retries}, "
            f"tokens {metrics.total_tokens} (prompt {metrics.prompt_tokens}, "
            f"completion {metrics.completion_tokens}), cost ${metrics.cost_usd:.6f}",
        ),
        _field("root hash", trace.root_hash or "-"),
    ]


def _ms(value: float) -> str:
    return f"{value:.2f} ms"


def print_trace(trace: Trace, as_json: bool, db: str | None) -> None:
    """The trace on stdout: JSON, or text that tells how to resume a recorded run."""
    if as_json:
        print(trace.model_dump_json(indent=2))
        return
    text = format_trace(trace)
    print(text if db is None else _recorded_hint(text, trace, db))


def one_line(trace: Trace) -> str:
    error = f"  {' '.join(trace.error.split())}" if trace.error else ""
    return f"{trace.trace_id}  {trace.status.value}{error}"


def _recorded_hint(text: str, trace: Trace, db: str) -> str:
    """format_trace tells how to resume in Python, in memory; a recorded run is resumed with
    the command line, from any process."""
    if trace.status is not TraceStatus.SUSPENDED:
        return text
    lines = text.split("\n")
    start = next((i for i, s in enumerate(lines) if s.startswith("resume ") and "vm." in s), None)
    if start is None:
        return text
    end = start + 1
    while end < len(lines) and lines[end].startswith(" "):
        end += 1
    hint = [
        _field(
            "resume",
            # The URL as str() shows it: a password in it is never printed.
            f"ledgerflow resume {trace.trace_id} --db {shlex.quote(str(DatabaseUrl.parse(db)))} "
            "--event JSON (any process)",
        )
    ]
    if trace.wake_at is not None:
        due = dt.datetime.fromtimestamp(trace.wake_at, dt.UTC).isoformat()
        hint.append(_field("timer", f"due {due}; `ledgerflow timers` fires due timers"))
    lines[start:end] = hint
    return "\n".join(lines)
