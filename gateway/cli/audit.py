"""`ledgerflow` commands for auditors: verify, proof, verify-proof, envelopes.

They open the database read-only and need no vault key: an auditor gets the file (or a copy)
and the verifier key, nothing else, and reading it records nothing and changes nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from gateway.cli.common import (
    add_db_option,
    aligned,
    db_url,
    existing_db,
    failures,
    field,
    open_workspace,
    positive_int,
    run_async,
    seq_number,
)
from gateway.cli.errors import EXIT_FAILED, EXIT_OK, UsageError
from gateway.cli.inputs import read_text
from gateway.cli.witness import witnessed
from governance import (
    EnvelopeKind,
    EnvelopeQuery,
    GovernanceEnvelope,
    LedgerError,
    LedgerStore,
    Verifier,
    verify_ledger_at,
    verify_proof_bundle,
)
from governance.consistency import note_size, proof_bundle_consistency
from governance.errors import CheckpointError
from governance.storage.connect import ledger_store
from kernel.canonical import canonical_json
from kernel.errors import SchemaVersionError

_PAGE = 1000
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


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


def cmd_verify(args: argparse.Namespace) -> int:
    db = existing_db(args)
    keys = verifier_keys(args.key)
    url = db_url(db)
    try:
        report = asyncio.run(verify_ledger_at(db, keys))
    except failures(LedgerError, SchemaVersionError) as exc:  # not a ledger, a newer schema
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
    if report.ok and args.witnesses:
        enough, line = witnessed(db, args.witnesses, args.witness_key)
        print(field("witnesses", line))
        if not enough:
            print(field("result", f"FAILED: {args.witnesses} witness cosignature(s) required"))
            return EXIT_FAILED
    if report.ok:
        print(field("result", "OK"))
        return EXIT_OK
    where = "" if report.first_bad_seq is None else f" at seq {report.first_bad_seq}"
    print(field("result", f"FAILED{where}: {report.reason}"))
    return EXIT_FAILED


def cmd_proof(args: argparse.Namespace) -> int:
    since = None if args.since is None else _note_size(args.since)
    bundle = run_async(_proof(args, existing_db(args), since))
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


async def _proof(args: argparse.Namespace, db: str, since: int | None) -> dict[str, Any]:
    async with open_workspace(args, db) as workspace:
        return await workspace.ledger.proof_bundle(args.seq, since)


def _note_size(path: str) -> int:
    try:
        return note_size(read_text(path, "checkpoint note").encode())
    except LedgerError as exc:
        raise UsageError(f"{path} is not a checkpoint note: {exc}") from None


def cmd_verify_proof(args: argparse.Namespace) -> int:
    keys = verifier_keys(args.key)
    assert keys is not None  # --key is required
    source = "standard input" if args.bundle == "-" else f"bundle {args.bundle}"
    text = sys.stdin.read() if args.bundle == "-" else read_text(args.bundle, "bundle")
    try:
        bundle = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"{source} is not JSON: {exc}") from None
    trusted = None if args.checkpoint is None else read_text(args.checkpoint, "checkpoint note")
    try:
        verify_proof_bundle(bundle, keys)
        extends = None
        if trusted is not None:
            extends = proof_bundle_consistency(bundle, trusted.encode(), keys)
    except LedgerError as exc:
        print(f"FAILED: {exc}")
        return EXIT_FAILED
    if extends is not None and not extends.ok:
        print(f"FAILED: the bundle's checkpoint against yours: {extends.describe()}")
        return EXIT_FAILED
    envelope = bundle["envelope"]
    print(
        f"OK: envelope seq {envelope['seq']} ({envelope['kind']} of {envelope['execution_id']}) "
        f"is in log {bundle['origin']!r} of size {bundle['tree_size']}, signed by a given key"
    )
    if extends is not None:
        print(f"OK: {extends.describe()}")
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
    except failures(LedgerError, SchemaVersionError) as exc:
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


def add_commands(commands: Any) -> None:
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
    sub.add_argument(
        "--witnesses",
        type=positive_int,
        metavar="N",
        help="also require a checkpoint cosigned by N witnesses (ledgerflow witness)",
    )
    sub.add_argument(
        "--witness-key",
        action="append",
        metavar="VKEY",
        help="a witness key you trust (repeatable; default: the configured witnesses' keys)",
    )
    sub.set_defaults(handler=cmd_verify)

    sub = commands.add_parser(
        "proof",
        help="print the proof bundle of one envelope",
        description="A self-contained proof that envelope SEQ is in the log: the envelope, a "
        "signed checkpoint and the Merkle inclusion proof. Check it with verify-proof.",
    )
    add_db_option(sub)
    sub.add_argument(
        "--seq", required=True, type=seq_number, metavar="N", help="the envelope's seq"
    )
    sub.add_argument("--out", metavar="FILE", help="write the bundle to FILE, not stdout")
    sub.add_argument(
        "--since",
        metavar="NOTE",
        help="also prove the log extends this checkpoint note (for verify-proof --checkpoint)",
    )
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
    sub.add_argument(
        "--checkpoint",
        metavar="NOTE",
        help="a checkpoint note you already trust: the bundle's checkpoint must extend it "
        "(the bundle made with `proof --since NOTE`)",
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
    sub.add_argument("--limit", type=positive_int, metavar="N", help="at most N envelopes")
    sub.add_argument(
        "--jsonl",
        action="store_true",
        help="print each envelope as a JSON line (RFC 8785), not a table",
    )
    sub.set_defaults(handler=cmd_envelopes)
