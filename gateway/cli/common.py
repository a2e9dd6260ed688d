"""What every `ledgerflow` command that works on a ledger shares: the `--db` option and its
companion files, opening the workspace or the application service, running the command's
coroutine, and the text layout of its output.

Commands that change a ledger act through `LedgerflowService` (`open_service`), as the MCP tools
do, so the ledger's policy and its access records apply to the command line too; the caller is
`Principal.local_operator()` (`local:<user>`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
from collections.abc import AsyncIterator, Coroutine, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from gateway.application.principal import Principal
from gateway.application.service import Invalid, LedgerflowService
from gateway.application.workspace import LEASE_SECONDS, LedgerBusyError, Workspace
from gateway.cli.errors import CommandError, UsageError
from governance.storage.connect import driver_errors
from governance.storage.database_url import DatabaseUrl, DatabaseUrlError
from governance.storage.ledger_port import Synchronous
from kernel import LedgerflowError, LLMAdapter, ProgramError
from kernel.tools import Tool

DB_ENV = "LEDGERFLOW_DB"
DEFAULT_DB = "ledgerflow.db"
KEK_FILE_ENV = "LEDGERFLOW_KEK_FILE"
SIGNING_KEY_FILE_ENV = "LEDGERFLOW_SIGNING_KEY_FILE"
LEASE_ENV = "LEDGERFLOW_LEASE_SECONDS"
_LABEL = 13
T = TypeVar("T")


def add_db_option(
    parser: argparse.ArgumentParser, *, companions: bool = True, db_help: str | None = None
) -> None:
    group = parser.add_argument_group("ledger files")
    group.add_argument(
        "--db",
        metavar="PATH|URL",
        help=db_help
        or "the ledger: a SQLite file, sqlite:///PATH or postgresql://USER@HOST/DBNAME"
        f"[?schema=NAME] (default: ${DB_ENV}, else ./{DEFAULT_DB})",
    )
    if not companions:
        return
    group.add_argument(
        "--keys", metavar="FILE", help="SQLite: the vault's key store (default: PATH.keys)"
    )
    group.add_argument(
        "--kek",
        metavar="FILE",
        default=os.environ.get(KEK_FILE_ENV) or None,
        help=f"the vault's key-encryption key (default: ${KEK_FILE_ENV}, else $LEDGERFLOW_KEK, "
        "else PATH.kek beside a SQLite ledger)",
    )
    group.add_argument(
        "--signing-key",
        metavar="FILE",
        dest="signing_key",
        default=os.environ.get(SIGNING_KEY_FILE_ENV) or None,
        help=f"the checkpoint signing key (default: ${SIGNING_KEY_FILE_ENV}, else "
        "$LEDGERFLOW_SIGNING_KEY, else PATH.signing-key beside a SQLite ledger)",
    )
    group.add_argument(
        "--lease-seconds",
        metavar="S",
        dest="lease_seconds",
        type=positive_float,
        default=None,
        help=f"PostgreSQL: how long this process's runs stay its own without renewal before "
        f"another instance may take them over (default: ${LEASE_ENV}, else "
        f"{LEASE_SECONDS:g})",
    )


def db_path(args: argparse.Namespace) -> str:
    db: str | None = args.db
    return db or os.environ.get(DB_ENV) or DEFAULT_DB


def db_url(db: str) -> DatabaseUrl:
    try:
        return DatabaseUrl.parse(db)
    except DatabaseUrlError as exc:
        raise UsageError(f"--db: {exc}") from None


def existing_db(args: argparse.Namespace) -> str:
    """The --db of a command that needs a ledger already there (a SQLite file must exist; a
    PostgreSQL database is checked when it is opened)."""
    db = db_path(args)
    url = db_url(db)
    if url.path is not None and not url.path.is_file():
        raise UsageError(
            f"no ledger at {db}",
            [
                f"record a run first (ledgerflow run PROGRAM --db {db}), or point --db or {DB_ENV} "
                "at a ledger"
            ],
        )
    return db


@asynccontextmanager
async def open_workspace(
    args: argparse.Namespace,
    db: str,
    *,
    reader: bool = False,
    lease_seconds: float | None = None,
    synchronous: Synchronous = "FULL",
) -> AsyncIterator[Workspace]:
    """The workspace of `db` with the companion paths of the command line."""
    url = db_url(db)
    try:
        workspace = await Workspace.open(
            url,
            keys_path=args.keys,
            kek_path=args.kek,
            signing_key_path=args.signing_key,
            reader=reader,
            lease_seconds=lease_seconds or lease_from(args),
            synchronous=synchronous,
        )
    except LedgerBusyError as exc:
        raise CommandError(str(exc)) from None
    except failures(LedgerflowError, OSError) as exc:
        raise UsageError(f"cannot open the ledger {url}: {exc}") from None
    async with workspace:
        yield workspace


@asynccontextmanager
async def open_service(
    args: argparse.Namespace,
    db: str,
    tools: Mapping[str, Tool] | None = None,
    llm: LLMAdapter | None = None,
    *,
    lease_seconds: float | None = None,
    synchronous: Synchronous = "FULL",
) -> AsyncIterator[LedgerflowService]:
    """The application service over the workspace of `db`: what every command that acts on
    runs or erases goes through."""
    async with open_workspace(
        args, db, lease_seconds=lease_seconds, synchronous=synchronous
    ) as workspace:
        service = await LedgerflowService.open(workspace, tools, llm)
        try:
            yield service
        finally:
            await service.close()


def local_operator() -> Principal:
    """Who a command acts as: the person running it, with every scope."""
    return Principal.local_operator()


def run_async(work: Coroutine[Any, Any, T]) -> T:
    """Run a command's coroutine; errors the runtime raises on purpose become exit codes."""
    try:
        return asyncio.run(work)
    except (UsageError, CommandError):
        raise
    except (ProgramError, Invalid) as exc:  # handlers that can hint raise UsageError themselves
        raise UsageError(str(exc)) from None
    except failures(LedgerflowError) as exc:  # refused by the policy, unknown run, ...
        raise CommandError(str(exc)) from None


def failures(*errors: type[BaseException]) -> tuple[type[BaseException], ...]:
    """`errors` and the database drivers' errors: what a command reports as its failure."""
    return (*errors, *driver_errors())


def lease_from(args: argparse.Namespace) -> float:
    """--lease-seconds, else $LEDGERFLOW_LEASE_SECONDS, else the default."""
    given: float | None = getattr(args, "lease_seconds", None)
    if given is not None:
        return given
    text = os.environ.get(LEASE_ENV)
    if not text:
        return LEASE_SECONDS
    try:
        return positive_float(text)
    except argparse.ArgumentTypeError as exc:
        raise UsageError(f"{LEASE_ENV}: {exc}") from None


def field(label: str, value: object) -> str:
    return f"{label:<{_LABEL}}{value}"


def aligned(rows: Sequence[Sequence[str]]) -> list[str]:
    """Rows of cells (the first one a header) as lines with their columns aligned."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]


def positive_int(text: str) -> int:
    return int_at_least(text, 1)


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{value:g} is not positive")
    return value


def seq_number(text: str) -> int:
    return int_at_least(text, 0)


def int_at_least(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"{value} is less than {low}")
    return value
