"""`ledgerflow serve-http` (the gateway over HTTP) and `ledgerflow token create|list|revoke`.

Settings come from defaults < ledgerflow.toml (or --config) < LEDGERFLOW_* < flags. Over HTTP
authentication is on unless the settings turn it off, and then only a loopback address may be
bound (`Settings.refuse_unsafe_bind`). uvicorn's access log is off: it would print URLs, and a
client may have put a token in one (the gateway refuses it, but the log would keep it).

A token's text is printed once, on stdout alone (so `$(ledgerflow token create ...)` captures
it); it cannot be shown again, only revoked and replaced.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import logging
import re
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from gateway.auth import TokenError, TokenInfo, TokenStore
from gateway.cli_inputs import UsageError, load_tool_specs
from gateway.cli_ledger import (
    EXIT_OK,
    add_db_option,
    aligned,
    db_path,
    db_url,
    existing_db,
    open_workspace,
    run_async,
)
from gateway.principal import Scope
from gateway.settings import Settings, SettingsError, load_settings
from gateway.tool_loading import Tool, ToolLoadingError, load_spec
from governance.stores import open_tables
from kernel import LLMAdapter
from kernel.adapters import MockLLMAdapter
from kernel.clock import SystemClock

logger = logging.getLogger("ledgerflow.serve")
T = TypeVar("T")

_DURATION = re.compile(r"([1-9][0-9]*)([smhdw])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_SCOPES = ", ".join(s.value for s in Scope)

_SERVE_EPILOG = """\
example:
  ledgerflow token create --name ci --scopes run,read --db ledger.db
  ledgerflow serve-http --db ledger.db --tools examples.payments:TOOLS --port 8765

MCP clients connect to http://HOST:PORT/mcp (Streamable HTTP) or /sse (legacy SSE) with
'Authorization: Bearer <token>'. Webhooks: POST /hooks/TRACE_ID signed with webhook_secret.
Probes: GET /healthz, GET /readyz.
"""


def add_http_commands(commands: Any) -> None:
    """Register `serve-http` and `token` on the `ledgerflow` command's subparsers."""
    _add_serve_http(commands)
    _add_token(commands)


# --- serve-http ---------------------------------------------------------------------------------


def _add_serve_http(commands: Any) -> None:
    serve = commands.add_parser(
        "serve-http",
        help="serve the ledger to MCP clients over HTTP",
        description="Serve runs, programs and the audit ledger as MCP tools over HTTP, with "
        "bearer tokens,\nsigned webhooks and health probes.",
        epilog=_SERVE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument("--host", help="address to bind (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to bind; 0 for any free port (default: 8765)")
    serve.add_argument(
        "--tools",
        metavar="MODULE:ATTR",
        action="append",
        help="tools the programs may call: a dict (name -> callable) or one callable; repeatable",
    )
    serve.add_argument(
        "--config", metavar="FILE", help="settings file (default: ./ledgerflow.toml)"
    )
    add_db_option(serve)
    serve.set_defaults(handler=cmd_serve_http)


def cmd_serve_http(args: argparse.Namespace) -> int:
    settings = http_settings(args)
    try:
        settings.refuse_unsafe_bind()  # before anything is opened
    except SettingsError as exc:
        raise UsageError(str(exc)) from None
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    with contextlib.redirect_stdout(sys.stderr):  # a tool module printing at import
        tools = _settings_tools(settings) | (load_tool_specs(args.tools) or {})
    return run_async(_serve_http(args, settings, tools, _llm(settings)))


def http_settings(args: argparse.Namespace) -> Settings:
    """The settings, with the flags given as the top layer; problems become a UsageError."""
    overrides = {"transport": "http", "host": args.host, "port": args.port, "db": args.db}
    try:
        return load_settings(args.config, overrides)
    except SettingsError as exc:
        raise UsageError(str(exc)) from None


async def _serve_http(
    args: argparse.Namespace, settings: Settings, tools: dict[str, Tool], llm: LLMAdapter | None
) -> int:
    # Imported here: the MCP SDK and the web server take a second to import, and only the
    # serving commands need them.
    import uvicorn

    from gateway.circuit import CircuitBreakers
    from gateway.http_app import build_app
    from gateway.service import LedgerflowService

    breakers = CircuitBreakers(
        settings.circuit.threshold, settings.circuit.reset_seconds, clock=SystemClock()
    )
    db = settings.db
    async with open_workspace(args, db, lease_seconds=settings.lease_seconds) as workspace:
        # The settings' policy becomes the ledger's active policy: its hash is on every
        # envelope from now on.
        await workspace.ledger.set_policy(settings.policy.snapshot("serve-http"))
        service = await LedgerflowService.open(workspace, breakers.wrap_all(tools), llm)
        try:
            async with TokenStore(workspace.tables(), synchronous=settings.synchronous) as tokens:
                app = build_app(service, tokens, settings, breakers=breakers)
                config = uvicorn.Config(
                    app, host=settings.host, port=settings.port, access_log=False
                )
                auth = "bearer tokens" if settings.auth_required else "NO authentication"
                logger.info("serving %s over HTTP with %s", workspace.where, auth)
                await uvicorn.Server(config).serve()
        finally:
            await service.close()
    return EXIT_OK


def _settings_tools(settings: Settings) -> dict[str, Tool]:
    """`[tools] name = "module:attr"`: each spec must name exactly one callable."""
    tools: dict[str, Tool] = {}
    for name, spec in settings.tools.items():
        try:
            loaded = load_spec(spec)
        except ToolLoadingError as exc:
            raise UsageError(f"[tools] {name}: {exc}") from None
        if len(loaded) != 1:
            raise UsageError(f"[tools] {name}: '{spec}' names {len(loaded)} tools, not one")
        tools[name] = next(iter(loaded.values()))
    return tools


def _llm(settings: Settings) -> LLMAdapter | None:
    model, replies = settings.llm.model, settings.llm.mock_replies
    if model is None:
        return None
    if model != "mock":
        try:
            from kernel.adapters import LiteLLMAdapter

            return LiteLLMAdapter(model)
        except ImportError as exc:
            raise UsageError(f"llm.model '{model}': {exc}") from None
    if not replies:
        raise UsageError("llm.model = 'mock' needs llm.mock_replies")
    return MockLLMAdapter(replies[0] if len(replies) == 1 else replies)


# --- token --------------------------------------------------------------------------------------


def _add_token(commands: Any) -> None:
    token = commands.add_parser(
        "token",
        help="create, list and revoke the HTTP gateway's bearer tokens",
        description="Bearer tokens for `ledgerflow serve-http`, stored (as hashes) in the "
        "ledger's database.",
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

    async def create(store: TokenStore) -> tuple[str, TokenInfo]:
        return await store.create(args.name, scopes, expires)

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
    rows = [["ID", "NAME", "SCOPES", "STATUS", "CREATED", "EXPIRES"]]
    for info in infos:
        expires = "never" if info.expires_at is None else _iso(info.expires_at)
        scopes = ",".join(sorted(s.value for s in info.scopes))
        rows.append([info.id, info.name, scopes, info.status(now), _iso(info.created_at), expires])
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
    return f"token '{info.name}' ({info.id}, scopes {scopes})"


def _iso(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
