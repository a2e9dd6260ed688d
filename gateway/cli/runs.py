"""`ledgerflow` commands that run programs: run (in memory, or recorded with --db), resume,
recover, timers, cancel.

A recorded run lives in the ledger, so each command may be a new process: `resume` in one
process continues what `run` suspended in another. Every command on a recorded run goes through
the application service, as the MCP tools do: the ledger's active policy decides what may run,
and each call leaves an `access` envelope (a refusal, a `denied` one) with the caller
`local:<user>`. A run without --db stays in memory: no ledger, so nothing recorded and no
policy (the policy lives in the ledger).
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Iterable
from typing import Any

from gateway.application.service import Invalid, LedgerflowService
from gateway.application.workspace import LOCK_WAIT_SECONDS
from gateway.cli.common import add_db_option, existing_db, local_operator, open_service, run_async
from gateway.cli.errors import EXIT_FAILED, EXIT_OK, UsageError
from gateway.cli.inputs import load_program, parse_context, parse_event
from gateway.cli.runtime import Runtime, add_runtime_options
from gateway.cli.trace_format import one_line, print_trace
from kernel import ExecutionVM, Program, ProgramError, Trace, TraceStatus

OK_STATUSES = (TraceStatus.SUCCESS, TraceStatus.SUSPENDED)

_RUN_EPILOG = """\
examples (from the repository root):
  ledgerflow run examples/payment_flow.yaml --tools examples.payments:TOOLS \\
      --context '{"order_id": "A-1001", "amount": 250}'
  ledgerflow run examples/refund_guardrail.yaml --tools examples.payments:TOOLS --llm-mock yes \\
      --context @request.json --json
  ledgerflow run examples/payment_flow.yaml --tools examples.payments:TOOLS --db ledger.db \\
      --context '{"order_id": {"$secret": "A-1001", "subject": "cust-7"}, "amount": 250}'

exit codes: 0 SUCCESS or SUSPENDED, 1 FAILED / BUDGET_EXCEEDED / STALLED or refused by the
            ledger's policy, 2 bad command line, context, tools or program
"""


def _exit(traces: Iterable[Trace]) -> int:
    return EXIT_OK if all(t.status in OK_STATUSES for t in traces) else EXIT_FAILED


def _report(traces: list[Trace], none: str) -> int:
    """One line per run acted on (or `none`); exit 1 if any of them ended badly."""
    for trace in traces:
        print(one_line(trace))
    if not traces:
        print(none)
    return _exit(traces)


def _hinted(exc: Exception, hints: list[str]) -> UsageError:
    return UsageError(str(exc), hints)


# --- run --------------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    try:
        program = load_program(args.program)
    except ProgramError as exc:
        raise UsageError(str(exc)) from None
    context = parse_context(args.context)
    runtime = Runtime(args)
    db: str | None = args.db  # not $LEDGERFLOW_DB: without --db a run stays in memory
    if db is None:
        trace = asyncio.run(_run_in_memory(runtime, program, context))
    else:
        trace = run_async(_run_recorded(args, db, runtime, program, context))
    print_trace(trace, args.json, db)
    return _exit([trace])


async def _run_in_memory(
    runtime: Runtime, program: Program, context: dict[str, Any] | None
) -> Trace:
    vm = ExecutionVM(tools=runtime.tools, llm=runtime.llm)

    def register(tools: dict[str, Any]) -> None:
        for name, fn in tools.items():
            vm.register_tool(name, fn)

    async with runtime.downstream(register, program=program):
        try:
            vm.validate(program)
            return await vm.run(program, context)
        except ProgramError as exc:  # an invalid program, or a bad context
            raise _hinted(exc, runtime.hints(program, vm.tools)) from None


async def _run_recorded(
    args: argparse.Namespace,
    db: str,
    runtime: Runtime,
    program: Program,
    context: dict[str, Any] | None,
) -> Trace:
    async with (
        open_service(args, db, runtime.tools, runtime.llm) as service,
        runtime.attached(service, program),
    ):
        try:  # `{"$secret": v, "subject": id}` in the context is sealed into the vault first
            return await service.run_program(local_operator(), program, context)
        except Invalid as exc:
            raise _hinted(exc, runtime.hints(program, service.vm.tools)) from None


# --- resume, recover, timers, cancel --------------------------------------------------------


def cmd_resume(args: argparse.Namespace) -> int:
    db = existing_db(args)
    event = parse_event(args.event)
    trace = run_async(_resume(args, db, Runtime(args), event))
    print_trace(trace, args.json, db)
    return _exit([trace])


async def _resume(args: argparse.Namespace, db: str, runtime: Runtime, event: Any) -> Trace:
    async with (
        open_service(args, db, runtime.tools, runtime.llm) as service,
        runtime.attached(service),
    ):
        try:
            return await service.resume_run(local_operator(), args.trace_id, event)
        except Invalid as exc:
            raise _hinted(exc, await _run_hints(service, runtime, [args.trace_id])) from None


async def _run_hints(
    service: LedgerflowService, runtime: Runtime, trace_ids: Iterable[str]
) -> list[str]:
    """What the runs' programs need from the command line that it did not give."""
    runs = service.workspace.journal.runs
    hints: list[str] = []
    for trace_id in trace_ids:
        row = await runs.get(trace_id)
        if row is not None:
            program = Program.from_dict(await runs.program(row.program_hash))
            hints += [h for h in runtime.hints(program, service.vm.tools) if h not in hints]
    return hints


def cmd_recover(args: argparse.Namespace) -> int:
    traces = run_async(_recover(args, existing_db(args), Runtime(args)))
    return _report(traces, "no run to recover")


async def _recover(args: argparse.Namespace, db: str, runtime: Runtime) -> list[Trace]:
    async with (
        open_service(args, db, runtime.tools, runtime.llm) as service,
        runtime.attached(service),
    ):
        try:  # every run checked before anything runs again
            return await service.recover(local_operator(), wait_seconds=args.wait)
        except Invalid as exc:
            hint = "register the tools of the runs with --tools MODULE:ATTR"
            raise UsageError(str(exc), [hint]) from None


def cmd_timers(args: argparse.Namespace) -> int:
    traces = run_async(_timers(args, existing_db(args), Runtime(args)))
    return _report(traces, "no timer due")


async def _timers(args: argparse.Namespace, db: str, runtime: Runtime) -> list[Trace]:
    async with (
        open_service(args, db, runtime.tools, runtime.llm) as service,
        runtime.attached(service),
    ):
        try:
            return await service.fire_due_timers(local_operator())
        except Invalid as exc:
            due = await service.workspace.journal.due_timers(service.vm.clock.now())
            raise _hinted(exc, await _run_hints(service, runtime, due)) from None


def cmd_cancel(args: argparse.Namespace) -> int:
    trace = run_async(_cancel(args, existing_db(args)))
    print(one_line(trace))
    return EXIT_OK


async def _cancel(args: argparse.Namespace, db: str) -> Trace:
    async with open_service(args, db) as service:
        return await service.cancel_run(local_operator(), args.trace_id, args.reason)


# --- registration ----------------------------------------------------------------------------


def _add_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--json", action="store_true", help="print the whole trace as JSON instead of text"
    )


def add_commands(commands: Any) -> None:
    run = commands.add_parser(
        "run",
        help="run a program once and print its trace",
        description="Run PROGRAM once and print its trace. In memory, unless --db names a "
        "ledger:\nthen every step is recorded there, the ledger's policy applies, and a "
        "suspended run\ncan be resumed by a later command. With a ledger, context values written "
        '{"$secret": VALUE, "subject": "ID"}\nare sealed into the vault first: only a ref '
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
    add_runtime_options(run)
    _add_json(run)
    add_db_option(
        run, db_help="record the run in this ledger (without --db it stays in memory only)"
    )
    run.set_defaults(handler=cmd_run)

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
    add_runtime_options(sub)
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
    sub.add_argument(
        "--wait",
        type=float,
        default=LOCK_WAIT_SECONDS,
        metavar="S",
        help="SQLite: how long to wait for the other writers to finish "
        f"(default: {LOCK_WAIT_SECONDS:g})",
    )
    add_runtime_options(sub)
    add_db_option(sub)
    sub.set_defaults(handler=cmd_recover)

    sub = commands.add_parser(
        "timers",
        help="fire due timers once",
        description="Wake every suspended run whose timer is due (wait steps, suspension "
        "deadlines), once. Schedule it (cron) to keep timers firing.",
    )
    add_runtime_options(sub)
    add_db_option(sub)
    sub.set_defaults(handler=cmd_timers)

    sub = commands.add_parser("cancel", help="cancel a suspended run")
    sub.add_argument("trace_id", metavar="TRACE_ID")
    sub.add_argument("--reason", default="cancelled", metavar="TEXT")
    add_db_option(sub)
    sub.set_defaults(handler=cmd_cancel)
