"""`ledgerflow token create|list|revoke`: the bearer tokens of the HTTP gateway.

A token's text is printed once, on stdout alone (so `$(ledgerflow token create ...)` captures
it); it cannot be shown again, only revoked and replaced.
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from gateway.application.principal import Scope
from gateway.cli.common import (
    add_db_option,
    aligned,
    db_path,
    db_url,
    existing_db,
    open_workspace,
    run_async,
)
from gateway.cli.errors import EXIT_OK, UsageError
from gateway.http.tokens import TokenError, TokenInfo, TokenStore
from governance.storage.connect import open_tables

T = TypeVar("T")

_DURATION = re.compile(r"([1-9][0-9]*)([smhdw])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_SCOPES = ", ".join(s.value for s in Scope)


def add_commands(commands: Any) -> None:
    token = commands.add_parser(
        "token",
        help="create, list and revoke the HTTP gateway's bearer tokens",
        description="Bearer tokens for `ledgerflow serve --transport http`, stored (as "
        "hashes) in the ledger's database.",
    )
    actions = token.add_subparsers(title="actions", metavar="ACTION", required=True)
    create = actions.add_parser(
        "create",
        help="issue a token (printed once)",
        description="Issue a token; its text is printed once on stdout and cannot be shown again.",
    )
    create.add_argument("--name", required=True, help="who or what holds it (unique while live)")
    create.add_argument(
        "--scopes", required=True, metavar="LIST", help=f"comma-separated: {_SCOPES}"
    )
    create.add_argument(
        "--tools",
        metavar="LIST",
        help="with the tools scope: comma-separated SERVER.TOOL patterns it may call through "
        "the gateway, such as 'files.read_*,github.*' (default: any exposed tool)",
    )
    create.add_argument(
        "--expires", metavar="DURATION", help="lifetime such as 90m, 12h, 30d, 4w (default: none)"
    )
    add_db_option(create)  # the companions: a missing ledger is created first
    create.set_defaults(handler=cmd_token_create)
    listing = actions.add_parser("list", help="every token: name, scopes, status (never its text)")
    add_db_option(listing, companions=False)
    listing.set_defaults(handler=cmd_token_list)
    revoke = actions.add_parser("revoke", help="revoke a token at once")
    revoke.add_argument("token", metavar="NAME_OR_ID", help="a token's name or id (tok_...)")
    add_db_option(revoke, companions=False)
    revoke.set_defaults(handler=cmd_token_revoke)


def cmd_token_create(args: argparse.Namespace) -> int:
    scopes = [s.strip() for s in args.scopes.split(",") if s.strip()]
    expires = None if args.expires is None else parse_duration(args.expires)
    tools = None if args.tools is None else args.tools.split(",")
    if tools is not None and "tools" not in scopes:
        raise UsageError("--tools limits what the 'tools' scope allows: add tools to --scopes")

    async def create(store: TokenStore) -> tuple[str, TokenInfo]:
        return await store.create(args.name, scopes, expires, tools)

    db = db_path(args)
    url = db_url(db)
    fresh = args if url.path is not None and not url.path.exists() else None
    text, info = run_async(_with_store(db, create, fresh))
    print(text)
    print(
        f"created {_describe(info)}; this is the only time the token is shown",
        file=sys.stderr,
    )
    return EXIT_OK


def cmd_token_list(args: argparse.Namespace) -> int:
    async def listed(store: TokenStore) -> tuple[list[TokenInfo], float]:
        return await store.list(), store.clock.now()

    infos, now = run_async(_with_store(existing_db(args), listed))
    rows = [["ID", "NAME", "SCOPES", "STATUS", "CREATED", "EXPIRES", "TOOLS"]]
    for info in infos:
        expires = "never" if info.expires_at is None else _iso(info.expires_at)
        scopes = ",".join(sorted(s.value for s in info.scopes))
        tools = "-" if Scope.TOOLS not in info.scopes else ",".join(info.tools or ["any"])
        created = _iso(info.created_at)
        rows.append([info.id, info.name, scopes, info.status(now), created, expires, tools])
    for line in aligned(rows):
        print(line)
    return EXIT_OK


def cmd_token_revoke(args: argparse.Namespace) -> int:
    async def revoke(store: TokenStore) -> TokenInfo:
        return await store.revoke(args.token)

    info = run_async(_with_store(existing_db(args), revoke))
    print(f"revoked {_describe(info)}")
    return EXIT_OK


def parse_duration(text: str) -> float:
    """`30d` -> seconds; units s, m, h, d, w."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise UsageError(f"--expires '{text}': expected a number and a unit, e.g. 90m, 12h, 30d")
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2)]


async def _with_store(
    db: str,
    action: Callable[[TokenStore], Awaitable[T]],
    create_ledger: argparse.Namespace | None = None,
) -> T:
    """Run `action` on the token store of `db`; with `create_ledger` (the command's args), the
    ledger is created first: a file holding only tokens would not open as a ledger."""
    if create_ledger is not None:
        async with open_workspace(create_ledger, db):
            pass
    try:
        async with open_tables(db_url(db)) as tables, TokenStore(tables) as store:
            return await action(store)
    except TokenError as exc:
        raise UsageError(str(exc)) from None


def _describe(info: TokenInfo) -> str:
    scopes = ",".join(sorted(s.value for s in info.scopes))
    tools = "" if info.tools is None else f", tools {','.join(info.tools)}"
    return f"token '{info.name}' ({info.id}, scopes {scopes}{tools})"


def _iso(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
