"""The `ledgerflow` command line: run programs, check them, serve them, and work with their
ledger.

Exit codes: 0 success (or a suspended run), 1 the run ended badly / the program is invalid /
the command could not do its work, 2 the command line or its inputs are wrong. Errors go to
stderr as `error: ...`, never as a traceback.

One module per command group: `runs` (run, resume, recover, timers, cancel), `validate`,
`trace` (trace, replay), `ledger` (checkpoint, pubkey, erase, prune), `audit` (verify, proof,
verify-proof, envelopes), `serve` (stdio and HTTP), `tokens`, `admin` (db init, migrate).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from importlib import metadata

from gateway.cli import (
    admin,
    audit,
    audit_ui,
    consistency,
    ledger,
    runs,
    serve,
    servers,
    tokens,
    trace,
    validate,
    witness,
)
from gateway.cli.errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE, CommandError, UsageError

__all__ = ["EXIT_FAILED", "EXIT_OK", "EXIT_USAGE", "build_parser", "main"]

Handler = Callable[[argparse.Namespace], int]
_GROUPS = (
    runs,
    validate,
    trace,
    ledger,
    audit,
    audit_ui,
    consistency,
    serve,
    servers,
    tokens,
    witness,
    admin,
)


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
        description="Run and check ledgerflow programs (deterministic workflows), serve them "
        "to MCP clients, and audit the ledger that records them.",
    )
    parser.add_argument("--version", action="version", version=f"ledgerflow {_version()}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    for group in _GROUPS:
        group.add_commands(commands)
    return parser


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
