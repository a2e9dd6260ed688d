"""`ledgerflow trace` and `ledgerflow replay`: a recorded run read back, and checked against its
program (or a new version of it).

Both open the ledger read-only and record nothing: like the auditor's commands, they work on a
copy of the file and beside a live process.
"""

from __future__ import annotations

import argparse
from typing import Any

from gateway.cli.common import add_db_option, existing_db, open_workspace, run_async
from gateway.cli.errors import EXIT_FAILED, EXIT_OK, CommandError, UsageError
from gateway.cli.inputs import load_program
from gateway.cli.trace_format import print_trace
from kernel import Program, ProgramError, Trace, replay
from kernel.capability import TOMBSTONE


def cmd_trace(args: argparse.Namespace) -> int:
    db = existing_db(args)
    trace = run_async(_trace(args, db))
    print_trace(trace, args.json, db)
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


def add_commands(commands: Any) -> None:
    sub = commands.add_parser(
        "trace",
        help="print a recorded run",
        description="Print a run as recorded; secrets erased since show as [REDACTED_TOMBSTONE].",
    )
    sub.add_argument("trace_id", metavar="TRACE_ID")
    sub.add_argument(
        "--json", action="store_true", help="print the whole trace as JSON instead of text"
    )
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
