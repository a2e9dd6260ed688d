"""What a `ledgerflow` command reports instead of a traceback, and the exit code it means.

Both derive from `LedgerflowError`, like every error a user can see: a script embedding the
command line catches one base class.
"""

from __future__ import annotations

from collections.abc import Iterable

from kernel import LedgerflowError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


class UsageError(LedgerflowError):
    """Wrong input on the command line: printed as `error: ...` (plus hints), exit code 2."""

    def __init__(self, message: str, hints: Iterable[str] = ()) -> None:
        super().__init__(message)
        self.hints = list(hints)


class CommandError(LedgerflowError):
    """The command could not do its work (unknown run, refused resume...): exit code 1."""
