"""`ledgerflow witness add | list | submit`: the witnesses that cosign the ledger's checkpoints
(C2SP tlog-witness), and `verify --witnesses N` to require their cosignatures.

    ledgerflow witness add --url https://witness.example/ --key 'witness.example/w1+...' --db L
    ledgerflow witness submit --db L      (a serving process does it for each new checkpoint)
    ledgerflow witness list --db L        (each witness, the size it cosigned, its last refusal)
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from gateway.application.witnesses import (
    WitnessError,
    WitnessStore,
    cosigned_checkpoints,
)
from gateway.cli.common import (
    add_db_option,
    db_url,
    existing_db,
    local_operator,
    open_service,
    run_async,
)
from gateway.cli.errors import EXIT_FAILED, EXIT_OK, UsageError
from governance.cosignature import WitnessKey
from governance.errors import CheckpointError
from governance.storage.connect import ledger_store, open_tables


def add_commands(commands: Any) -> None:
    group = commands.add_parser(
        "witness", help="the witnesses that cosign the ledger's checkpoints (C2SP tlog-witness)"
    )
    actions = group.add_subparsers(dest="action", metavar="ACTION", required=True)
    add = actions.add_parser(
        "add",
        help="configure a witness",
        description="Configure a witness: its submission URL prefix (add-checkpoint is posted "
        "under it) and its key (NAME+KEYID+base64, an Ed25519 cosignature/v1 vkey).",
    )
    add.add_argument("--url", required=True, help="the witness's submission prefix")
    add.add_argument("--key", required=True, metavar="VKEY", help="the witness's verifier key")
    add_db_option(add)
    add.set_defaults(handler=cmd_add)
    listing = actions.add_parser("list", help="each witness: the size it cosigned, its last error")
    add_db_option(listing)
    listing.set_defaults(handler=cmd_list)
    send = actions.add_parser(
        "submit", help="submit the latest checkpoint to every witness now (exit 1 if refused)"
    )
    add_db_option(send)
    send.set_defaults(handler=cmd_submit)


def cmd_add(args: argparse.Namespace) -> int:
    async def add() -> str:
        async with (
            open_service(args, existing_db(args)) as service,
            service.workspace.operational(WitnessStore) as store,
        ):
            return (await store.add(args.url, args.key)).name

    try:
        name = run_async(add())
    except (WitnessError, CheckpointError) as exc:
        raise UsageError(str(exc)) from None
    print(f"witness {name!r} added; each new checkpoint goes to {args.url.rstrip('/')}")
    return EXIT_OK


def cmd_list(args: argparse.Namespace) -> int:
    async def listed() -> list[Any]:
        async with open_tables(db_url(existing_db(args))) as db, WitnessStore(db) as store:
            return await store.all()

    for witness in run_async(listed()):
        state = witness.last_error or "ok"
        print(f"{witness.name}  {witness.url}  cosigned size {witness.cosigned_size}  {state}")
    return EXIT_OK


def cmd_submit(args: argparse.Namespace) -> int:
    async def submitted() -> list[Any]:
        async with open_service(args, existing_db(args)) as service:
            return await service.witness_checkpoint(local_operator())

    results = run_async(submitted())
    if not results:
        raise UsageError("no witness is configured: ledgerflow witness add --url ... --key ...")
    for result in results:
        detail = f": {result.detail}" if result.detail else ""
        print(f"{result.witness}: {result.outcome} (size {result.tree_size}){detail}")
    bad = any(r.outcome in ("refused", "failed") for r in results)
    return EXIT_FAILED if bad else EXIT_OK


def witnessed(db: str, required: int, keys: list[str] | None) -> tuple[bool, str]:
    """Whether a checkpoint of the ledger at `db` carries `required` valid cosignatures (from
    `keys`, else the configured witnesses' keys), and a line saying which."""

    async def read() -> tuple[dict[int, set[str]], int]:
        store = ledger_store(db_url(db), readonly=True)
        await store.open()
        try:
            checkpoints = await store.list_checkpoints()
        finally:
            await store.close()
        async with open_tables(db_url(db)) as tables, WitnessStore(tables) as witnesses:
            trusted = (
                [WitnessKey.from_text(k) for k in keys]
                if keys
                else [w.key for w in await witnesses.all()]
            )
            cosignatures = await witnesses.cosignatures()
        notes = {record.tree_size: record.note for record in checkpoints}
        latest = max(notes, default=0)
        return cosigned_checkpoints(cosignatures, trusted, notes), latest

    try:
        found, latest = asyncio.run(read())
    except CheckpointError as exc:
        raise UsageError(f"--witness-key: {exc}") from None
    enough = [size for size, names in found.items() if len(names) >= required]
    if not enough:
        best = max((len(n) for n in found.values()), default=0)
        return False, f"no checkpoint has {required} cosignature(s) (at most {best})"
    size = max(enough)
    names = ", ".join(sorted(found[size]))
    behind = f"; {latest - size} envelope(s) since are not yet witnessed" if latest > size else ""
    return True, f"checkpoint of size {size} cosigned by {names}{behind}"
