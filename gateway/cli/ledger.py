"""`ledgerflow` commands that keep a ledger: checkpoint, pubkey, erase, prune.

`erase` and `prune` go through the application service (recorded as the local operator's
calls); `checkpoint` and `pubkey` only sign and show the ledger's own keys.
"""

from __future__ import annotations

import argparse
import base64
from pathlib import Path
from typing import Any

from gateway.cli.common import (
    add_db_option,
    db_path,
    existing_db,
    field,
    local_operator,
    open_service,
    open_workspace,
    run_async,
)
from gateway.cli.errors import EXIT_OK, CommandError, UsageError
from governance import EnvelopeKind
from governance.storage.ledger_port import CheckpointRecord

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def cmd_checkpoint(args: argparse.Namespace) -> int:
    db = existing_db(args)
    record = run_async(_checkpoint(args, db))
    if record is None:
        raise CommandError(f"the ledger {db} is empty: there is nothing to sign")
    if args.out is not None:  # the note an auditor keeps, to check the ledger against later
        try:
            Path(args.out).write_bytes(record.note)
        except OSError as exc:
            raise UsageError(f"cannot write {args.out}: {exc.strerror or exc}") from None
        print(f"checkpoint of size {record.tree_size} written to {args.out}")
        return EXIT_OK
    print(field("size", record.tree_size))
    print(field("root", base64.b64encode(record.root).decode()))
    print(field("index", record.index))
    print()
    print(record.note.decode(), end="")
    return EXIT_OK


async def _checkpoint(args: argparse.Namespace, db: str) -> CheckpointRecord | None:
    async with open_workspace(args, db) as workspace:
        return await workspace.ledger.checkpoint()


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
    async with open_service(args, db) as service:
        receipt = await service.erase_subject(
            local_operator(), args.subject, args.reason, args.request_id
        )
        [envelope] = await service.workspace.ledger.query(
            execution_id=receipt.request_id, kind=EnvelopeKind.ERASE
        )
    print(field("request", receipt.request_id))
    print(field("subject", f"sha256 {receipt.subject_hash}"))
    print(field("refs erased", len(receipt.ref_ids)))
    print(field("runs covered", len(envelope.payload["execution_ids"])))
    print(field("erased at", receipt.erased_at.isoformat()))
    print(field("recorded", f"erase envelope seq {envelope.seq}, checkpoint signed"))
    return EXIT_OK


def parse_age(text: str) -> float:
    """'90d', '12h', '30m', '45s' -> seconds (argparse type: a bad value is a usage error)."""
    number, unit = text[:-1], text[-1:]
    if unit not in _UNITS or not number.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not an age like 90d, 12h, 30m or 45s")
    return int(number) * _UNITS[unit]


def cmd_prune(args: argparse.Namespace) -> int:
    removed = run_async(_prune(args, existing_db(args)))
    print(f"removed the operational rows of {removed} finished run(s); envelopes are kept")
    return EXIT_OK


async def _prune(args: argparse.Namespace, db: str) -> int:
    async with open_service(args, db) as service:
        return await service.prune_runs(local_operator(), args.older_than)


def add_commands(commands: Any) -> None:
    sub = commands.add_parser(
        "checkpoint",
        help="sign a checkpoint of the ledger now",
        description="Cut and sign a checkpoint of every envelope; print its size, root and note. "
        "With --out, write the signed note to a file: an auditor keeps it and later checks, "
        "with verify-consistency, that the ledger only grew since.",
    )
    sub.add_argument("--out", metavar="FILE", help="write the signed note to FILE")
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
        "prune",
        help="remove finished runs' operational rows (never envelopes)",
        description="Remove the run index rows, event ids and idempotency keys of runs that "
        "finished longer ago than --older-than. Envelopes are never touched: the ledger stays "
        "complete and verifiable.",
    )
    sub.add_argument(
        "--older-than", required=True, type=parse_age, metavar="AGE", help="e.g. 90d, 12h, 30m"
    )
    add_db_option(sub)
    sub.set_defaults(handler=cmd_prune)
