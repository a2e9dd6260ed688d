"""`ledgerflow validate`: a program checked without running anything."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from gateway.cli.errors import EXIT_FAILED, EXIT_OK
from gateway.cli.inputs import load_program, load_tool_specs
from gateway.cli.runtime import Runtime, add_runtime_options
from kernel import Program, ProgramError, ProgramValidator, ValidationReport

_EPILOG = """\
example:
  ledgerflow validate examples/payment_flow.yaml --tools examples.payments:TOOLS

exit codes: 0 valid (warnings allowed), 1 at least one error, 2 bad command line or tools
"""


def add_commands(commands: Any) -> None:
    validate = commands.add_parser(
        "validate",
        help="check a program without running it",
        description="Load PROGRAM and analyse it without running anything: structure, "
        "references,\nconditions and cycles always; tool names only with --tools; a downstream "
        "server's tools\n(NAME.TOOL) and their literal arguments whenever servers are configured. "
        "Prints every error and\nwarning, then a summary line.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    validate.add_argument("program", metavar="PROGRAM", help="program file (.json, .yaml or .yml)")
    add_runtime_options(validate, llm=False)
    validate.add_argument(
        "--llm",
        action="store_true",
        help="an LLM adapter will be available when the program runs",
    )
    validate.set_defaults(handler=cmd_validate)


def cmd_validate(args: argparse.Namespace) -> int:
    tools = load_tool_specs(args.tools)
    try:
        program = load_program(args.program)
    except ProgramError as exc:
        for problem in exc.problems:
            print(f"error: {problem}")
        print(f"{args.program}: invalid, {count(len(exc.problems), 'error')} (not loaded)")
        return EXIT_FAILED
    runtime = Runtime(args)
    if runtime.server_configs:
        report = asyncio.run(_validate_with_servers(program, runtime, tools, args.llm))
    else:
        llm = True if args.llm else None
        report = ProgramValidator(tools=tools, llm=llm).validate(program)
    for finding in report.findings:
        print(f"{finding.severity.value}: {finding}")
    print(_summary(program.name, report))
    return EXIT_OK if report.ok else EXIT_FAILED


async def _validate_with_servers(
    program: Program, runtime: Runtime, tools: dict[str, Any] | None, llm: bool
) -> ValidationReport:
    """The downstream tools the program calls are listed by their servers, so that each
    step's literal arguments are checked against the tool's inputSchema. Without --tools, the
    other tool names are taken on trust."""
    known: dict[str, Any] = dict(tools or {})
    async with runtime.downstream(known.update, program=program):
        if tools is None:
            for step in program.all_steps():
                if step.tool is not None and "." not in step.tool:
                    known.setdefault(step.tool, None)
        return ProgramValidator(tools=known, llm=True if llm else None).validate(program)


def _summary(name: str, report: ValidationReport) -> str:
    verdict = "valid" if report.ok else "invalid"
    errors, warnings = len(report.errors), len(report.warnings)
    return f"{name}: {verdict}, {count(errors, 'error')}, {count(warnings, 'warning')}"


def count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"
