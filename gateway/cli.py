"""The `ledgerflow` command line: run programs, check them, and work with their ledger.

Exit codes: 0 success (or a suspended run), 1 the run ended badly / the program is invalid /
the command could not do its work, 2 the command line or its inputs are wrong. Errors go to
stderr as `error: ...`, never as a traceback.

Command groups: runs (`gateway.cli_runs`: run, resume, recover, timers, cancel, trace,
replay), the ledger (`gateway.cli_ledger`: checkpoint, pubkey, erase, verify, proof,
verify-proof, envelopes) and `validate`, here.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from importlib import metadata
from typing import Any

from gateway import cli_db, cli_http, cli_ledger, cli_runs, cli_serve
from gateway.cli_inputs import UsageError, load_program, load_tool_specs
from gateway.cli_ledger import EXIT_FAILED, EXIT_OK, EXIT_USAGE, CommandError
from kernel import ProgramError, ProgramValidator, ValidationReport

__all__ = ["EXIT_FAILED", "EXIT_OK", "EXIT_USAGE", "build_parser", "main"]

Handler = Callable[[argparse.Namespace], int]

_VALIDATE_EPILOG = """\
example:
  ledgerflow validate examples/payment_flow.yaml --tools examples.payments:TOOLS

exit codes: 0 valid (warnings allowed), 1 at least one error, 2 bad command line or tools
"""


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and argparse's usage errors
        return _exit_code(exc.code)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return handler(args)
    except UsageError as exc:
        _error(str(exc))
        for hint in exc.hints:
            print(f"hint: {hint}", file=sys.stderr)
        return EXIT_USAGE
    except CommandError as exc:
        _error(str(exc))
        return EXIT_FAILED
    except KeyboardInterrupt:
        _error("interrupted")
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ledgerflow",
        description="Run and check ledgerflow programs (deterministic workflows), and audit "
        "the ledger that records them.",
    )
    parser.add_argument("--version", action="version", version=f"ledgerflow {_version()}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    cli_runs.add_run(commands)
    _add_validate(commands)
    cli_runs.add_commands(commands)
    cli_ledger.add_commands(commands)
    cli_serve.add_serve(commands)
    cli_http.add_http_commands(commands)
    cli_db.add_commands(commands)
    return parser


def _add_validate(commands: Any) -> None:
    validate = commands.add_parser(
        "validate",
        help="check a program without running it",
        description="Load PROGRAM and analyse it without running anything: structure, "
        "references,\nconditions and cycles always; tool names only with --tools. Prints every "
        "error and\nwarning, then a summary line.",
        epilog=_VALIDATE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_program(validate)
    _add_tools(validate)
    validate.add_argument(
        "--llm",
        action="store_true",
        help="an LLM adapter will be available when the program runs",
    )
    validate.set_defaults(handler=cmd_validate)


def _add_program(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("program", metavar="PROGRAM", help="program file (.json, .yaml or .yml)")


def _add_tools(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tools",
        metavar="MODULE:ATTR",
        action="append",
        help="tools to register: a dict (name -> callable) or one callable, imported from "
        "MODULE (the working directory is searched first); repeatable",
    )


# --- validate -------------------------------------------------------------------------------


def cmd_validate(args: argparse.Namespace) -> int:
    tools = load_tool_specs(args.tools)
    try:
        program = load_program(args.program)
    except ProgramError as exc:
        for problem in exc.problems:
            print(f"error: {problem}")
        print(f"{args.program}: invalid, {_count(len(exc.problems), 'error')} (not loaded)")
        return EXIT_FAILED
    validator = ProgramValidator(
        tools=None if tools is None else tools.keys(), llm=True if args.llm else None
    )
    report = validator.validate(program)
    for finding in report.findings:
        print(f"{finding.severity.value}: {finding}")
    print(_summary(program.name, report))
    return EXIT_OK if report.ok else EXIT_FAILED


def _summary(name: str, report: ValidationReport) -> str:
    verdict = "valid" if report.ok else "invalid"
    errors, warnings = len(report.errors), len(report.warnings)
    return f"{name}: {verdict}, {_count(errors, 'error')}, {_count(warnings, 'warning')}"


# --- shared ---------------------------------------------------------------------------------


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _version() -> str:
    try:
        return metadata.version("ledgerflow")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def _exit_code(code: object) -> int:
    if code is None:
        return EXIT_OK
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return EXIT_FAILED


def _error(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
