"""The error hierarchy: one base for the whole project, one branch per concern.

Every message names what is wrong (step id, field, reference, value) so that a user or a model can
act on it without reading a traceback.
"""

from __future__ import annotations


class LedgerflowError(Exception):
    """Base of every error raised on purpose by ledgerflow."""


class ProgramError(LedgerflowError, ValueError):
    """A program (or the context given to it) is invalid: raised before anything runs."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems: list[str] = problems if problems is not None else [message]


class ExpressionError(LedgerflowError, ValueError):
    """A condition or reference cannot be parsed, or cannot be evaluated on the values it met."""

    def __init__(self, message: str, *, column: int | None = None) -> None:
        super().__init__(message)
        self.column = column


class VMError(LedgerflowError, RuntimeError):
    """A step could not be executed as the program asks (tool error, bad output, missing value)."""


class ResumeError(LedgerflowError, RuntimeError):
    """A resume was refused: unknown run, not suspended, already resumed, or a different program."""


class DuplicateEventError(ResumeError):
    """This event (same event id) was already delivered to this run: acknowledge, do nothing."""


class IdempotencyError(LedgerflowError, ValueError):
    """An idempotency key was reused with a different program or context."""


class CanonicalizationError(LedgerflowError, ValueError):
    """A value has no canonical JSON form (NaN, a lone surrogate, an unsupported type)."""


class SchemaVersionError(LedgerflowError):
    """A stored file or database (ledger, key store) was written by a schema version this code
    does not read: upgrade ledgerflow, or open it for writing once to migrate it."""

    def __init__(self, message: str, *, found: int | None, supported: int) -> None:
        super().__init__(message)
        self.found = found
        self.supported = supported
