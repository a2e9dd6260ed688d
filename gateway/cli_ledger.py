"""`ledgerflow` commands on the ledger itself: checkpoint, pubkey, erase, verify, proof,
verify-proof, envelopes. Also the plumbing every `--db` command shares (cli_runs uses it).

Auditor commands (verify, verify-proof, envelopes) open the database read-only and need no
vault key: an auditor gets the file and the verifier key, nothing else.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime as dt
import json
import os
import sys
from collections.abc import AsyncIterator, Coroutine, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

from gateway.cli_inputs import UsageError, read_text
from gateway.workspace import LEASE_SECONDS, LedgerBusyError, Workspace
from governance import (
    EnvelopeKind,
    EnvelopeQuery,
    GovernanceEnvelope,
    LedgerError,
    LedgerStore,
    Verifier,
    verify_ledger,
    verify_proof_bundle,
)
from governance.database_url import DatabaseUrl, DatabaseUrlError
from governance.errors import CheckpointError
from governance.stores import driver_errors, ledger_store
from kernel import LedgerflowError, ProgramError
from kernel.canonical import canonical_json

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
DB_ENV = "LEDGERFLOW_DB"
DEFAULT_DB = "ledgerflow.db"
KEK_FILE_ENV = "LEDGERFLOW_KEK_FILE"
SIGNING_KEY_FILE_ENV = "LEDGERFLOW_SIGNING_KEY_FILE"
LEASE_ENV = "LEDGERFLOW_LEASE_SECONDS"
_PAGE = 1000
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_LABEL = 13
T = TypeVar("T")


class CommandError(Exception):
    """The command could not do its work (unknown run, refused resume...): exit code 1."""


# --- shared plumbing ------------------------------------------------------------------------


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
        type=_positive_float,
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
    args: argparse.Namespace, db: str, *, reader: bool = False, lease_seconds: float | None = None
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
        )
    except LedgerBusyError as exc:
        raise CommandError(str(exc)) from None
    except failures(LedgerflowError, OSError) as exc:
        raise UsageError(f"cannot open the ledger {url}: {exc}") from None
    async with workspace:
        yield workspace


def run_async(work: Coroutine[Any, Any, T]) -> T:
    """Run a command's coroutine; errors the runtime raises on purpose become exit codes."""
    try:
        return asyncio.run(work)
    except ProgramError as exc:  # handlers that can hint raise UsageError themselves
        raise UsageError(str(exc)) from None
    except failures(LedgerflowError) as exc:
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
        return _positive_float(text)
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


def verifier_keys(values: list[str] | None) -> list[str] | None:
    """`--key` values: key texts, or @FILE holding one key per line."""
    if not values:
        return None
    keys: list[str] = []
    for value in values:
        if value.startswith("@"):
            text = read_text(value[1:], "key file")
            keys += [line.strip() for line in text.splitlines() if line.strip()]
        else:
            keys.append(value.strip())
    for key in keys:
        if key.startswith("PRIVATE+KEY+"):  # never echo a private key back
            raise UsageError("--key got a signing (private) key; pass its verifier key")
        try:
            Verifier.from_text(key)
        except CheckpointError as exc:
            raise UsageError(f"--key {key!r} is not a verifier key: {exc}") from None
    if not keys:
        raise UsageError("--key: the key file holds no key")
    return keys


# --- checkpoint, pubkey, erase ---------------------------------------------------------------


def cmd_checkpoint(args: argparse.Namespace) -> int:
    return run_async(_checkpoint(args, existing_db(args)))


async def _checkpoint(args: argparse.Namespace, db: str) -> int:
    async with open_workspace(args, db) as workspace:
        record = await workspace.ledger.checkpoint()
    if record is None:
        raise CommandError(f"the ledger {db} is empty: there is nothing to sign")
    print(field("size", record.tree_size))
    print(field("root", base64.b64encode(record.root).decode()))
    print(field("index", record.index))
    print()
    print(record.note.decode(), end="")
    return EXIT_OK


def cmd_pubkey(args: argparse.Namespace) -> int:
    # Creates the workspace if needed: the key can go to auditors before the first run.
    return run_async(_pubkey(args, db_path(args)))


async def _pubkey(args: argparse.Namespace, db: str) -> int:
    async with open_workspace(args, db, reader=True) as workspace:
        print(workspace.audit_key())
    return EXIT_OK


def cmd_erase(args: argparse.Namespace) -> int:
    return run_async(_erase(args, existing_db(args)))


async def _erase(args: argparse.Namespace, db: str) -> int:
    async with open_workspace(args, db) as workspace:
        receipt = await workspace.erase(args.subject, args.reason, args.request_id)
        [envelope] = await workspace.ledger.query(
            execution_id=receipt.request_id, kind=EnvelopeKind.ERASE
        )
    print(field("request", receipt.request_id))
    print(field("subject", f"sha256 {receipt.subject_hash}"))
    print(field("refs erased", len(receipt.ref_ids)))
    print(field("runs covered", len(envelope.payload["execution_ids"])))
    print(field("erased at", receipt.erased_at.isoformat()))
    print(field("recorded", f"erase envelope seq {envelope.seq}, checkpoint signed"))
    return EXIT_OK


# --- verify, proof, verify-proof -------------------------------------------------------------


def cmd_verify(args: argparse.Namespace) -> int:
    db = existing_db(args)
    keys = verifier_keys(args.key)
    url = db_url(db)
    try:
        report = asyncio.run(verify_ledger(db, keys))
    except failures(LedgerError) as exc:  # not a ledger, or a newer schema
        raise UsageError(f"cannot audit {url}: {exc}") from None
    print(field("ledger", url))
    print(field("entries", f"{report.entries_checked} checked"))
    print(field("checkpoints", f"{report.checkpoints_checked} checked"))
    if keys is None:
        print(
            field(
                "keys",
                "stored in the file (shows only that it agrees with itself; "
                "pass --key for an audit)",
            )
        )
    else:
        print(field("keys", f"{len(keys)} given"))
    if report.ok:
        print(field("result", "OK"))
        return EXIT_OK
    where = "" if report.first_bad_seq is None else f" at seq {report.first_bad_seq}"
    print(field("result", f"FAILED{where}: {report.reason}"))
    return EXIT_FAILED


def cmd_proof(args: argparse.Namespace) -> int:
    bundle = run_async(_proof(args, existing_db(args)))
    text = json.dumps(bundle, indent=2, ensure_ascii=False) + "\n"
    if args.out is None:
        print(text, end="")
        return EXIT_OK
    try:
        Path(args.out).write_text(text, encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot write {args.out}: {exc.strerror or exc}") from None
    print(f"proof of seq {args.seq} (tree size {bundle['tree_size']}) written to {args.out}")
    return EXIT_OK


async def _proof(args: argparse.Namespace, db: str) -> dict[str, Any]:
    async with open_workspace(args, db) as workspace:
        return await workspace.ledger.proof_bundle(args.seq)


def cmd_verify_proof(args: argparse.Namespace) -> int:
    keys = verifier_keys(args.key)
    assert keys is not None  # --key is required
    source = "standard input" if args.bundle == "-" else f"bundle {args.bundle}"
    text = sys.stdin.read() if args.bundle == "-" else read_text(args.bundle, "bundle")
    try:
        bundle = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"{source} is not JSON: {exc}") from None
    try:
        verify_proof_bundle(bundle, keys)
    except LedgerError as exc:
        print(f"FAILED: {exc}")
        return EXIT_FAILED
    envelope = bundle["envelope"]
    print(
        f"OK: envelope seq {envelope['seq']} ({envelope['kind']} of {envelope['execution_id']}) "
        f"is in log {bundle['origin']!r} of size {bundle['tree_size']}, signed by a given key"
    )
    return EXIT_OK


# --- envelopes -------------------------------------------------------------------------------


def cmd_envelopes(args: argparse.Namespace) -> int:
    db = existing_db(args)
    query = EnvelopeQuery(
        execution_id=args.execution,
        kind=None if args.kind is None else EnvelopeKind(args.kind),
        policy_hash=args.policy,
        since=_micros(args.since, "--since"),
        until=_micros(args.until, "--until"),
    )
    return run_async(_envelopes(db, query, args.limit, args.jsonl))


async def _envelopes(db: str, query: EnvelopeQuery, limit: int | None, jsonl: bool) -> int:
    url = db_url(db)
    store = ledger_store(url, readonly=True)  # no writer, no lock: safe beside a live run
    try:
        await store.open()
    except failures(LedgerError) as exc:
        raise UsageError(f"cannot read {url}: {exc}") from None
    try:
        rows = _pages(store, query, limit)
        if jsonl:
            async for envelope in rows:
                print(canonical_json(envelope.model_dump(mode="json")).decode())
            return EXIT_OK
        found = [envelope async for envelope in rows]
    finally:
        await store.close()
    print(_table(found))
    return EXIT_OK


async def _pages(
    store: LedgerStore, query: EnvelopeQuery, limit: int | None
) -> AsyncIterator[GovernanceEnvelope]:
    """Matching envelopes, paged by seq (the log only grows, so pages stay consistent)."""
    start, left = 0, limit
    while left is None or left > 0:
        size = _PAGE if left is None else min(left, _PAGE)
        page = await store.query(
            EnvelopeQuery(
                execution_id=query.execution_id,
                kind=query.kind,
                policy_hash=query.policy_hash,
                since=query.since,
                until=query.until,
                start_seq=start,
                limit=size,
            )
        )
        for envelope in page:
            yield envelope
        if len(page) < size:
            return
        start = page[-1].seq + 1
        left = None if left is None else left - len(page)


def _table(envelopes: list[GovernanceEnvelope]) -> str:
    header = ("seq", "recorded at (UTC)", "kind", "execution", "step", "status")
    rows = [
        (
            str(e.seq),
            _iso(e.recorded_at),
            e.kind.value,
            e.execution_id,
            e.step_id or "-",
            e.status or "-",
        )
        for e in envelopes
    ]
    lines = aligned([header, *rows])
    count = len(envelopes)
    lines.append(f"{count} envelope{'' if count == 1 else 's'}")
    return "\n".join(lines)


def _iso(micros: int) -> str:
    moment = _EPOCH + dt.timedelta(microseconds=micros)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _micros(text: str | None, flag: str) -> int | None:
    """An ISO 8601 time as microseconds since the epoch; without an offset it is UTC."""
    if text is None:
        return None
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(f"{flag} {text!r} is not an ISO 8601 time (2025-01-31T12:00Z)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return (moment - _EPOCH) // dt.timedelta(microseconds=1)


# --- registration ----------------------------------------------------------------------------


def _positive(text: str) -> int:
    return _int_at_least(text, 1)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{value:g} is not positive")
    return value


def _seq(text: str) -> int:
    return _int_at_least(text, 0)


def _int_at_least(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"{value} is less than {low}")
    return value


def add_commands(commands: Any) -> None:
    sub = commands.add_parser(
        "checkpoint",
        help="sign a checkpoint of the ledger now",
        description="Cut and sign a checkpoint of every envelope; print its size, root and note.",
    )
    add_db_option(sub)
    sub.set_defaults(handler=cmd_checkpoint)

    sub = commands.add_parser(
        "pubkey",
        help="print the verifier key auditors need",
        description="Print the verifier key of the checkpoint signing key (creating the "
        "ledger's files if they do not exist yet).",
    )
    add_db_option(sub)
    sub.set_defaults(handler=cmd_pubkey)

    sub = commands.add_parser(
        "erase",
        help="erase a data subject's secrets (GDPR art. 17)",
        description="Crypto-shred every secret of SUBJECT in the vault, then record an erase "
        "envelope (no personal data: the subject as its SHA-256) and sign a checkpoint. "
        "Recorded values of the subject show as [REDACTED_TOMBSTONE] from then on.",
    )
    add_db_option(sub)
    sub.add_argument("--subject", required=True, metavar="ID", help="the data subject's id")
    sub.add_argument(
        "--reason",
        required=True,
        metavar="TEXT",
        help="legal basis or request reference, recorded in the ledger (no personal data)",
    )
    sub.add_argument(
        "--request-id",
        dest="request_id",
        metavar="ID",
        help="the erasure request's id (default: a new one)",
    )
    sub.set_defaults(handler=cmd_erase)

    sub = commands.add_parser(
        "verify",
        help="audit the whole ledger",
        description="Check the hash chain, the envelopes, the tombstone rule and every signed "
        "checkpoint. Exit 0 only when all of it holds.",
    )
    add_db_option(sub, companions=False)
    sub.add_argument(
        "--key",
        action="append",
        metavar="PUBKEY|@FILE",
        help="a verifier key you trust (from `ledgerflow pubkey`, obtained out of band), or a "
        "file of them; repeatable. Without it the keys stored in the file are used.",
    )
    sub.set_defaults(handler=cmd_verify)

    sub = commands.add_parser(
        "proof",
        help="print the proof bundle of one envelope",
        description="A self-contained proof that envelope SEQ is in the log: the envelope, a "
        "signed checkpoint and the Merkle inclusion proof. Check it with verify-proof.",
    )
    add_db_option(sub)
    sub.add_argument("--seq", required=True, type=_seq, metavar="N", help="the envelope's seq")
    sub.add_argument("--out", metavar="FILE", help="write the bundle to FILE, not stdout")
    sub.set_defaults(handler=cmd_proof)

    sub = commands.add_parser(
        "verify-proof",
        help="check a proof bundle with nothing but a key",
        description="Check a proof bundle (from `ledgerflow proof`) against verifier keys you "
        "trust; no ledger needed.",
    )
    sub.add_argument("bundle", metavar="BUNDLE", help="the bundle file, or - for stdin")
    sub.add_argument(
        "--key",
        required=True,
        action="append",
        metavar="PUBKEY|@FILE",
        help="a trusted verifier key, or a file of them; repeatable",
    )
    sub.set_defaults(handler=cmd_verify_proof)

    sub = commands.add_parser(
        "envelopes",
        help="list envelopes for auditors",
        description="List the envelopes matching every filter given, in seq order (read-only).",
    )
    add_db_option(sub, companions=False)
    sub.add_argument("--execution", metavar="ID", help="a run's trace id (or an erasure's id)")
    sub.add_argument("--kind", choices=[kind.value for kind in EnvelopeKind])
    sub.add_argument("--policy", metavar="HASH", help="the policy hash in force")
    sub.add_argument("--since", metavar="ISO", help="recorded at or after (UTC if no offset)")
    sub.add_argument("--until", metavar="ISO", help="recorded before (UTC if no offset)")
    sub.add_argument("--limit", type=_positive, metavar="N", help="at most N envelopes")
    sub.add_argument(
        "--jsonl",
        action="store_true",
        help="print each envelope as a JSON line (RFC 8785), not a table",
    )
    sub.set_defaults(handler=cmd_envelopes)
