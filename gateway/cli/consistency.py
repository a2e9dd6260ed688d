"""`ledgerflow verify-consistency`: has the ledger only grown since a checkpoint you hold?

    ledgerflow checkpoint --out cp.note --db ledger.db          (now: keep cp.note)
    ledgerflow verify-consistency --old cp.note --key KEY --db ledger.db      (later)
    ledgerflow verify-consistency --old cp.note --key KEY --url https://host/tlog/
    ledgerflow verify-consistency --old cp.note --key KEY --bundle proof.json  (offline)

With --db the ledger is asked (through the application service, as the local operator) for
its current signed checkpoint and a consistency proof from the old size; with --url the proof
is built here from the log's public checkpoint and hash tiles (`/tlog/`, C2SP tlog-tiles);
with --bundle the answer comes from a file (the MCP tool get_consistency_proof's result).
Either way the check itself uses only the two notes, the proof and the keys given: exit 0 when
the ledger extends the old checkpoint, 1 on a rollback or fork (both roots printed) or a bad
signature.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import httpx

from gateway.cli.audit import verifier_keys
from gateway.cli.common import add_db_option, existing_db, local_operator, open_service, run_async
from gateway.cli.errors import EXIT_FAILED, EXIT_OK, UsageError
from gateway.cli.inputs import read_text
from governance.checkpoint import Verifier, open_checkpoint
from governance.consistency import build_consistency_bundle, check_consistency
from governance.errors import CheckpointError, LedgerError
from governance.tiles import TiledTree, tile_path


def add_commands(commands: Any) -> None:
    sub = commands.add_parser(
        "verify-consistency",
        help="check that the ledger only grew since a checkpoint you hold",
        description="Check, against a signed checkpoint note you kept (`ledgerflow checkpoint "
        "--out`), that the ledger's current signed checkpoint extends it: a ledger rolled back "
        "below your checkpoint, or with a different history (a fork), is reported with both "
        "roots. Exit 0 only when it extends it.",
    )
    sub.add_argument("--old", required=True, metavar="NOTE", help="the checkpoint note you hold")
    sub.add_argument(
        "--key",
        required=True,
        action="append",
        metavar="PUBKEY|@FILE",
        help="a verifier key you trust, or a file of them; repeatable",
    )
    sub.add_argument(
        "--url",
        metavar="URL",
        help="ask the log served at URL (the C2SP tlog-tiles prefix, such as "
        "https://ledger.example/tlog/): its checkpoint and hash tiles; no database access",
    )
    sub.add_argument(
        "--bundle",
        metavar="FILE",
        help="check this consistency bundle (from the MCP tool get_consistency_proof) instead "
        "of asking the ledger at --db",
    )
    add_db_option(sub)
    sub.set_defaults(handler=cmd_verify_consistency)


def cmd_verify_consistency(args: argparse.Namespace) -> int:
    keys = verifier_keys(args.key)
    assert keys is not None  # --key is required
    old_note = read_text(args.old, "checkpoint note").encode()
    try:
        trusted = [Verifier.from_text(key) for key in keys]
        old_size = open_checkpoint(old_note, trusted).checkpoint.size
    except LedgerError as exc:
        print(f"FAILED: --old {args.old}: {exc}")
        return EXIT_FAILED
    if args.bundle is not None and args.url is not None:
        raise UsageError("give --bundle or --url, not both")
    try:
        if args.bundle is not None:
            try:
                bundle = json.loads(read_text(args.bundle, "bundle"))
            except ValueError as exc:
                raise UsageError(f"bundle {args.bundle} is not JSON: {exc}") from None
        elif args.url is not None:
            bundle = _from_tiles(args.url, old_size, trusted)
        else:
            bundle = run_async(_ask(args, existing_db(args), old_size))
        report = check_consistency(old_note, bundle, keys)
    except LedgerError as exc:
        print(f"FAILED: {exc}")
        return EXIT_FAILED
    print(("OK: " if report.ok else "FAILED: ") + report.describe())
    return EXIT_OK if report.ok else EXIT_FAILED


def _from_tiles(url: str, old_size: int, trusted: list[Verifier]) -> dict[str, Any]:
    """A consistency bundle built here from the log's public checkpoint and hash tiles; the
    tiles are trusted only once they hash to the signed root."""
    base = url.rstrip("/")
    with httpx.Client(timeout=30, follow_redirects=True) as http:

        def get(path: str) -> bytes:
            try:
                answer = http.get(f"{base}/{path}")
            except httpx.HTTPError as exc:
                raise UsageError(f"{base}/{path}: {exc}") from None
            if answer.status_code != 200:
                raise UsageError(f"{base}/{path}: HTTP {answer.status_code}")
            return answer.content

        note = get("checkpoint")
        current = open_checkpoint(note, trusted).checkpoint
        tree = TiledTree(
            current.size, lambda level, index, width: get(tile_path(level, index, width))
        )
        if current.size and tree.root() != current.root:
            raise CheckpointError(
                f"the tiles served at {base} do not hash to its signed checkpoint's root"
            )
        proof = tree.consistency_proof(old_size) if current.size >= old_size else None
    return build_consistency_bundle(current.origin, old_size, note, current.size, proof)


async def _ask(args: argparse.Namespace, db: str, old_size: int) -> dict[str, Any]:
    async with open_service(args, db) as service:
        return await service.get_consistency_proof(local_operator(), old_size)
