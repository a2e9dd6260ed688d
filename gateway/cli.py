"""The `ledgerflow` command line: run a program once, or check it without running it.

Exit codes: 0 success (or a suspended run), 1 the run ended badly / the program is invalid,
2 the command line or its inputs are wrong. Errors go to stderr as `error: ...`, never as a
traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Iterable
from importlib import metadata
from typing import Any

from gateway.cli_inputs import UsageError, load_program, load_tool_specs, parse_context
from gateway.tool_loading import Tool
from gateway.trace_format import format_trace
from kernel import (
    ExecutionVM,
    LLMAdapter,
    Program,
    ProgramError,
    ProgramValidator,
    Step,
    StepType,
    TraceStatus,
    ValidationReport,
)
from kernel.adapters import MockLLMAdapter

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
_OK_STATUSES = (TraceStatus.SUCCESS, TraceStatus.SUSPENDED)

Handler = Callable[[argparse.Namespace], int]

_RUN_EPILOG = """\
examples (from the repository root):
  ledgerflow run examples/payment_flow.yaml --tools examples.payments:TOOLS \\
      --context '{"order_id": "A-1001", "amount": 250}'
  ledgerflow run examples/refund_guardrail.yaml --tools examples.payments:TOOLS --llm-mock yes \\
      --context @request.json --json

exit codes: 0 SUCCESS or SUSPENDED, 1 FAILED / BUDGET_EXCEEDED / STALLED,
            2 bad command line, context, tools or program
"""

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
    except KeyboardInterrupt:
        _error("interrupted")
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ledgerflow",
        description="Run and check ledgerflow programs (deterministic workflows).",
    )
    parser.add_argument("--version", action="version", version=f"ledgerflow {_version()}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    _add_run(commands)
    _add_validate(commands)
    return parser


def _add_run(commands: Any) -> None:
    run = commands.add_parser(
        "run",
        help="run a program once and print its trace",
        description="Run PROGRAM once, in memory, and print its trace.\n"
        "A run that suspends (a tool returned PENDING) is reported with the step it waits on.",
        epilog=_RUN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_program(run)
    run.add_argument(
        "--context",
        metavar="JSON",
        help="the run's initial variables: a JSON object, or @FILE to read it from a file",
    )
    _add_tools(run)
    run.add_argument(
        "--llm-mock",
        metavar="REPLY",
        action="append",
        dest="llm_mock",
        help="answer llm steps with REPLY without calling a model; repeat for replies in call "
        "order (a single reply answers every call)",
    )
    run.add_argument(
        "--json", action="store_true", help="print the whole trace as JSON instead of text"
    )
    run.set_defaults(handler=cmd_run)


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


# --- run ------------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    try:
        program = load_program(args.program)
    except ProgramError as exc:
        raise UsageError(str(exc)) from None
    context = parse_context(args.context)
    tools = load_tool_specs(args.tools) or {}
    replies: list[str] | None = args.llm_mock
    llm = _mock_llm(replies)
    vm = ExecutionVM(tools=tools, llm=llm)
    try:
        trace = asyncio.run(vm.run(program, context))
    except ProgramError as exc:  # validation against these tools/LLM, or a bad context
        raise UsageError(str(exc), _run_hints(program, tools, llm)) from None
    print(trace.model_dump_json(indent=2) if args.json else format_trace(trace))
    return EXIT_OK if trace.status in _OK_STATUSES else EXIT_FAILED


def _mock_llm(replies: list[str] | None) -> LLMAdapter | None:
    if not replies:
        return None
    return MockLLMAdapter(replies[0] if len(replies) == 1 else replies)


def _run_hints(program: Program, tools: dict[str, Tool], llm: LLMAdapter | None) -> list[str]:
    """Point at the flag that would fix a validation failure."""
    steps = list(_all_steps(program.steps))
    hints = []
    missing = sorted({s.tool for s in steps if s.tool is not None and s.tool not in tools})
    if missing:
        hints.append(f"register {', '.join(missing)} with --tools MODULE:ATTR")
    if llm is None and any(s.type is StepType.LLM for s in steps):
        hints.append("answer llm steps with --llm-mock REPLY")
    return hints


def _all_steps(steps: Iterable[Step]) -> Iterable[Step]:
    for step in steps:
        yield step
        yield from _all_steps(step.parallel_steps or ())


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
