"""`ledgerflow` commands on runs: run (in memory, or recorded with --db), resume, recover,
timers, cancel, trace, replay.

A recorded run lives in the ledger, so each command may be a new process: `resume` in one
process continues what `run` suspended in another.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import shlex
from collections.abc import Iterable
from typing import Any

from gateway.cli_inputs import UsageError, load_program, load_tool_specs, parse_context, read_text
from gateway.cli_ledger import (
    EXIT_FAILED,
    EXIT_OK,
    CommandError,
    add_db_option,
    existing_db,
    open_workspace,
    run_async,
)
from gateway.tool_loading import Tool
from gateway.trace_format import format_trace
from gateway.workspace import Workspace
from governance.database_url import DatabaseUrl
from kernel import (
    ExecutionVM,
    LLMAdapter,
    Program,
    ProgramError,
    StepType,
    Trace,
    TraceStatus,
    replay,
)
from kernel.adapters import MockLLMAdapter
from kernel.capability import TOMBSTONE
from vault import IntakeError, seal_context

OK_STATUSES = (TraceStatus.SUCCESS, TraceStatus.SUSPENDED)

_RUN_EPILOG = """\
examples (from the repository root):
  ledgerflow run examples/payment_flow.yaml --tools examples.payments:TOOLS \\
      --context '{"order_id": "A-1001", "amount": 250}'
  ledgerflow run examples/refund_guardrail.yaml --tools examples.payments:TOOLS --llm-mock yes \\
      --context @request.json --json
  ledgerflow run examples/payment_flow.yaml --tools examples.payments:TOOLS --db ledger.db \\
      --context '{"order_id": {"$secret": "A-1001", "subject": "cust-7"}, "amount": 250}'

exit codes: 0 SUCCESS or SUSPENDED, 1 FAILED / BUDGET_EXCEEDED / STALLED,
            2 bad command line, context, tools or program
"""


class _Runtime:
    """What a command needs to run steps: tools and an LLM from the command line."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.tools: dict[str, Tool] = load_tool_specs(args.tools) or {}
        replies: list[str] | None = args.llm_mock
        self.llm: LLMAdapter | None = None
        if replies:
            self.llm = MockLLMAdapter(replies[0] if len(replies) == 1 else replies)

    def validate(self, vm: ExecutionVM, program: Program) -> None:
        """Validate before anything is claimed or stored, with hints at the flag to fix."""
        try:
            vm.validate(program)
        except ProgramError as exc:
            raise UsageError(str(exc), self.hints(program)) from None

    def hints(self, program: Program) -> list[str]:
        steps = list(program.all_steps())
        hints = []
        missing = sorted({s.tool for s in steps if s.tool is not None and s.tool not in self.tools})
        if missing:
            hints.append(f"register {', '.join(missing)} with --tools MODULE:ATTR")
        if self.llm is None and any(s.type is StepType.LLM for s in steps):
            hints.append("answer llm steps with --llm-mock REPLY")
        return hints


def _print_trace(trace: Trace, as_json: bool, db: str | None) -> None:
    if as_json:
        print(trace.model_dump_json(indent=2))
        return
    text = format_trace(trace)
    print(text if db is None else _recorded_hint(text, trace, db))


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


def _field(label: str, value: str) -> str:
    return f"{label:<14}{value}"


def _exit(traces: Iterable[Trace]) -> int:
    return EXIT_OK if all(t.status in OK_STATUSES for t in traces) else EXIT_FAILED


def _one_line(trace: Trace) -> str:
    error = f"  {' '.join(trace.error.split())}" if trace.error else ""
    return f"{trace.trace_id}  {trace.status.value}{error}"


# --- run --------------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    try:
        program = load_program(args.program)
    except ProgramError as exc:
        raise UsageError(str(exc)) from None
    context = parse_context(args.context)
    runtime = _Runtime(args)
    db: str | None = args.db  # not $LEDGERFLOW_DB: without --db a run stays in memory
    if db is None:
        trace = asyncio.run(_run_in_memory(runtime, program, context))
    else:
        trace = run_async(_run_recorded(args, db, runtime, program, context))
    _print_trace(trace, args.json, db)
    return _exit([trace])


async def _run_in_memory(
    runtime: _Runtime, program: Program, context: dict[str, Any] | None
) -> Trace:
    vm = ExecutionVM(tools=runtime.tools, llm=runtime.llm)
    runtime.validate(vm, program)
    return await _start(vm, runtime, program, context)


async def _run_recorded(
    args: argparse.Namespace,
    db: str,
    runtime: _Runtime,
    program: Program,
    context: dict[str, Any] | None,
) -> Trace:
    async with open_workspace(args, db) as workspace:
        vm = workspace.vm(runtime.tools, runtime.llm)
        runtime.validate(vm, program)  # first: a refused program stores no secret
        if context is not None:
            try:  # nor does a context the run would refuse
                vm.check_context(program, context)
            except ProgramError as exc:
                raise UsageError(str(exc)) from None
            try:  # `{"$secret": v, "subject": id}` -> vault ref: no plaintext reaches the ledger
                context = seal_context(context, workspace.vault)
            except IntakeError as exc:
                raise UsageError(f"--context: {exc}") from None
        return await _start(vm, runtime, program, context)


async def _start(
    vm: ExecutionVM, runtime: _Runtime, program: Program, context: dict[str, Any] | None
) -> Trace:
    try:
        return await vm.run(program, context)
    except ProgramError as exc:  # a bad context
        raise UsageError(str(exc), runtime.hints(program)) from None


# --- resume, recover, timers, cancel --------------------------------------------------------


def cmd_resume(args: argparse.Namespace) -> int:
    db = existing_db(args)
    event = _parse_event(args.event)
    trace = run_async(_resume(args, db, _Runtime(args), event))
    _print_trace(trace, args.json, db)
    return _exit([trace])


async def _resume(args: argparse.Namespace, db: str, runtime: _Runtime, event: Any) -> Trace:
    async with open_workspace(args, db) as workspace:
        vm = workspace.vm(runtime.tools, runtime.llm)
        # The VM claims the run before validating its program: check first, so that missing
        # tools do not leave the run claimed (RUNNING) with nothing running it.
        await _check_programs(workspace, runtime, vm, [args.trace_id])
        return await vm.resume(args.trace_id, event)


def _parse_event(raw: str) -> Any:
    source = "--event"
    if raw.startswith("@"):
        source = f"event file {raw[1:]}"
        raw = read_text(raw[1:], "event file")
    try:
        return json.loads(raw, parse_constant=_reject_constant)
    except ValueError as exc:
        raise UsageError(f"{source} is not valid JSON: {exc}") from None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


async def _check_programs(
    workspace: Workspace, runtime: _Runtime, vm: ExecutionVM, trace_ids: Iterable[str]
) -> None:
    runs = workspace.journal.runs
    for trace_id in trace_ids:
        row = await runs.get(trace_id)
        if row is not None:  # an unknown run is the VM's to report
            runtime.validate(vm, Program.from_dict(await runs.program(row.program_hash)))


def _report(traces: list[Trace], none: str) -> int:
    """One line per run acted on (or `none`); exit 1 if any of them ended badly."""
    for trace in traces:
        print(_one_line(trace))
    if not traces:
        print(none)
    return _exit(traces)


def cmd_recover(args: argparse.Namespace) -> int:
    traces = run_async(_recover(args, existing_db(args), _Runtime(args)))
    return _report(traces, "no run to recover")


async def _recover(args: argparse.Namespace, db: str, runtime: _Runtime) -> list[Trace]:
    async with open_workspace(args, db) as workspace:
        vm = workspace.vm(runtime.tools, runtime.llm)
        try:
            return await workspace.recover(vm)
        except ProgramError as exc:  # validated before anything runs again
            hint = "register the tools of the runs with --tools MODULE:ATTR"
            raise UsageError(str(exc), [hint]) from None


def cmd_timers(args: argparse.Namespace) -> int:
    traces = run_async(_timers(args, existing_db(args), _Runtime(args)))
    return _report(traces, "no timer due")


async def _timers(args: argparse.Namespace, db: str, runtime: _Runtime) -> list[Trace]:
    async with open_workspace(args, db) as workspace:
        vm = workspace.vm(runtime.tools, runtime.llm)
        due = await workspace.journal.due_timers(vm.clock.now())
        await _check_programs(workspace, runtime, vm, due)  # as in resume: before the claims
        return await vm.fire_due_timers()


def cmd_cancel(args: argparse.Namespace) -> int:
    trace = run_async(_cancel(args, existing_db(args)))
    print(_one_line(trace))
    return EXIT_OK


async def _cancel(args: argparse.Namespace, db: str) -> Trace:
    async with open_workspace(args, db) as workspace:
        return await workspace.vm().cancel(args.trace_id, args.reason)


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_age(text: str) -> float:
    """'90d', '12h', '30m', '45s' -> seconds (argparse type: a bad value is a usage error)."""
    number, unit = text[:-1], text[-1:]
    if unit not in _UNITS or not number.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not an age like 90d, 12h, 30m or 45s")
    return int(number) * _UNITS[unit]


def cmd_prune(args: argparse.Namespace) -> int:
    removed = run_async(_prune(args, existing_db(args)))
    print(f"removed the operational rows of {removed} finished run(s); envelopes are kept")
    return EXIT_OK


async def _prune(args: argparse.Namespace, db: str) -> int:
    async with open_workspace(args, db) as workspace:
        return await workspace.journal.prune(args.older_than)


# --- trace, replay ---------------------------------------------------------------------------


def cmd_trace(args: argparse.Namespace) -> int:
    db = existing_db(args)
    trace = run_async(_trace(args, db))
    _print_trace(trace, args.json, db)
    return EXIT_OK


async def _trace(args: argparse.Namespace, db: str) -> Trace:
    async with open_workspace(args, db, reader=True) as workspace:
        try:
            return await workspace.trace(args.trace_id)
        except KeyError:
            raise CommandError(f"no run '{args.trace_id}' in {db}") from None


def cmd_replay(args: argparse.Namespace) -> int:
    db = existing_db(args)
    new_program = None
    if args.program is not None:
        try:
            new_program = load_program(args.program)
        except ProgramError as exc:
            raise UsageError(str(exc)) from None
    return run_async(_replay(args, db, new_program))


async def _replay(args: argparse.Namespace, db: str, program: Program | None) -> int:
    async with open_workspace(args, db, reader=True) as workspace:
        journal = workspace.journal
        recorded = await journal.load_trace(args.trace_id)  # refs restored, as the VM saw them
        if recorded is None:
            raise CommandError(f"no run '{args.trace_id}' in {db}")
        if program is None:
            program = Program.from_dict(await journal.runs.program(recorded.program_hash))
    report = await replay(program, recorded)
    what = f"run {recorded.trace_id} on program {program.name} ({program.hash[:12]})"
    if report.divergence is None:
        print(f"OK: {what}: {report.steps_checked} steps checked, status {report.status.value}")
        return EXIT_OK
    divergence = report.divergence
    step = "the end" if divergence.step_id is None else f"step '{divergence.step_id}'"
    print(f"DIVERGED: {what}, at {step} (record {divergence.index}): {divergence.reason}")
    if TOMBSTONE in divergence.reason:
        print("note: this step was recorded after an erasure, so its output holds a tombstone;")
        print("      its recorded state hash covers the ref it replaced: no replay gets past it")
    return EXIT_FAILED


# --- registration ----------------------------------------------------------------------------


def _add_runtime(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tools",
        metavar="MODULE:ATTR",
        action="append",
        help="tools to register: a dict (name -> callable) or one callable, imported from "
        "MODULE (the working directory is searched first); repeatable",
    )
    parser.add_argument(
        "--llm-mock",
        metavar="REPLY",
        action="append",
        dest="llm_mock",
        help="answer llm steps with REPLY without calling a model; repeat for replies in call "
        "order (a single reply answers every call)",
    )


def _add_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--json", action="store_true", help="print the whole trace as JSON instead of text"
    )


def add_run(commands: Any) -> None:
    run = commands.add_parser(
        "run",
        help="run a program once and print its trace",
        description="Run PROGRAM once and print its trace. In memory, unless --db names a "
        "ledger:\nthen every step is recorded there, and a suspended run "
        "can be resumed by a later command.\nWith a ledger, context values written "
        '{"$secret": VALUE, "subject": "ID"} are sealed into the vault\nfirst: only a ref '
        "reaches the run and the ledger.",
        epilog=_RUN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("program", metavar="PROGRAM", help="program file (.json, .yaml or .yml)")
    run.add_argument(
        "--context",
        metavar="JSON",
        help="the run's initial variables: a JSON object, or @FILE to read it from a file",
    )
    _add_runtime(run)
    _add_json(run)
    add_db_option(
        run, db_help="record the run in this ledger (without --db it stays in memory only)"
    )
    run.set_defaults(handler=cmd_run)


def add_commands(commands: Any) -> None:
    sub = commands.add_parser(
        "resume",
        help="resume a suspended run with an event",
        description="Resume a suspended run recorded in the ledger; EVENT becomes the output of "
        "the step it waits on. The program comes from the ledger.",
    )
    sub.add_argument("trace_id", metavar="TRACE_ID")
    sub.add_argument(
        "--event", required=True, metavar="JSON", help="the event: any JSON value, or @FILE"
    )
    _add_runtime(sub)
    _add_json(sub)
    add_db_option(sub)
    sub.set_defaults(handler=cmd_resume)

    sub = commands.add_parser(
        "recover",
        help="continue runs whose process died",
        description="Continue every run the ledger holds as RUNNING (its process died): "
        "recorded steps are reused, the step in flight runs again. Every process writing to the "
        "ledger holds a shared lock, so recover waits until it is the only one left instead "
        "of taking over a run that is still going.",
    )
    _add_runtime(sub)
    add_db_option(sub)
    sub.set_defaults(handler=cmd_recover)

    sub = commands.add_parser(
        "timers",
        help="fire due timers once",
        description="Wake every suspended run whose timer is due (wait steps, suspension "
        "deadlines), once. Schedule it (cron) to keep timers firing.",
    )
    _add_runtime(sub)
    add_db_option(sub)
    sub.set_defaults(handler=cmd_timers)

    sub = commands.add_parser("cancel", help="cancel a suspended run")
    sub.add_argument("trace_id", metavar="TRACE_ID")
    sub.add_argument("--reason", default="cancelled", metavar="TEXT")
    add_db_option(sub)
    sub.set_defaults(handler=cmd_cancel)

    sub = commands.add_parser(
        "prune",
        help="remove finished runs' operational rows (never envelopes)",
        description="Remove the run index rows, event ids and idempotency keys of runs that "
        "finished longer ago than --older-than. Envelopes are never touched: the ledger stays "
        "complete and verifiable.",
    )
    sub.add_argument(
        "--older-than", required=True, type=parse_age, metavar="AGE", help="e.g. 90d, 12h, 30m"
    )
    add_db_option(sub)
    sub.set_defaults(handler=cmd_prune)

    sub = commands.add_parser(
        "trace",
        help="print a recorded run",
        description="Print a run as recorded; secrets erased since show as [REDACTED_TOMBSTONE].",
    )
    sub.add_argument("trace_id", metavar="TRACE_ID")
    _add_json(sub)
    add_db_option(sub)
    sub.set_defaults(handler=cmd_trace)

    sub = commands.add_parser(
        "replay",
        help="check that a program still makes a recorded run's decisions",
        description="Replay a recorded run on its program, or on FILE (a new version): recorded "
        "outcomes are fed back, every decision is recomputed and checked against the recorded "
        "state hashes. Exit 1 at the first divergent step.",
    )
    sub.add_argument("trace_id", metavar="TRACE_ID")
    sub.add_argument("--program", metavar="FILE", help="replay on this program instead")
    add_db_option(sub)
    sub.set_defaults(handler=cmd_replay)
