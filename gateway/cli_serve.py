"""`ledgerflow serve`: the ledger served to MCP clients (stdio for now, for one local operator).

On stdio, stdout carries the protocol and nothing else: logs go to stderr, tool modules are
imported with Python's stdout pointed at stderr, and while serving the SDK points file
descriptor 1 at stderr too, so a stray print from a tool cannot corrupt a message. Before the
first request the server continues the runs a dead process left RUNNING (`recover`); while it
serves, due timers fire every second.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from typing import Any

from gateway.cli_inputs import UsageError, load_tool_specs
from gateway.cli_ledger import EXIT_OK, add_db_option, db_path, open_workspace, run_async
from gateway.principal import Principal, Scope
from gateway.tool_loading import Tool
from kernel import LLMAdapter
from kernel.adapters import MockLLMAdapter

TIMER_INTERVAL_SECONDS = 1.0
logger = logging.getLogger("ledgerflow.serve")

_EPILOG = """\
example (an MCP client's server command):
  ledgerflow serve --transport stdio --db ledger.db --tools examples.payments:TOOLS

The local operator gets every scope unless --scopes narrows them (run, read, audit, admin).
"""


def add_serve(commands: Any) -> None:
    """Register `serve` on the `ledgerflow` command's subparsers."""
    serve = commands.add_parser(
        "serve",
        help="serve the ledger to MCP clients",
        description="Serve runs, programs and the audit ledger as MCP tools. With --transport "
        "stdio the\nclient starts this command and speaks MCP over its stdin/stdout.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument(
        "--transport",
        choices=["stdio", "http"],
        default="stdio",
        help="stdio (default), or http: the same as `ledgerflow serve-http`",
    )
    serve.add_argument("--host", help="http: address to bind (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, help="http: port to bind (default: 8765)")
    serve.add_argument("--config", metavar="FILE", help="http: settings file (ledgerflow.toml)")
    serve.add_argument(
        "--tools",
        metavar="MODULE:ATTR",
        action="append",
        help="tools the programs may call: a dict (name -> callable) or one callable; repeatable",
    )
    serve.add_argument(
        "--scopes",
        metavar="LIST",
        help="comma-separated scopes of the local operator (default: all)",
    )
    serve.add_argument(
        "--llm-mock",
        metavar="REPLY",
        action="append",
        dest="llm_mock",
        help="answer llm steps with REPLY without calling a model; repeat for replies in call "
        "order",
    )
    add_db_option(serve)
    serve.set_defaults(handler=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    if args.transport == "http":
        from gateway.cli_http import cmd_serve_http

        return cmd_serve_http(args)
    _log_to_stderr()
    principal = Principal.local_operator(parse_scopes(args.scopes))
    with contextlib.redirect_stdout(sys.stderr):  # a tool module printing at import
        tools = load_tool_specs(args.tools) or {}
    replies: list[str] | None = args.llm_mock
    llm: LLMAdapter | None = None
    if replies:
        llm = MockLLMAdapter(replies[0] if len(replies) == 1 else replies)
    return run_async(_serve(args, db_path(args), tools, llm, principal))


def parse_scopes(raw: str | None) -> frozenset[Scope] | None:
    """`--scopes run,read`: None (every scope) when not given."""
    if raw is None:
        return None
    names = [name.strip() for name in raw.split(",") if name.strip()]
    known = ", ".join(s.value for s in Scope)
    try:
        return frozenset(Scope(name) for name in names)
    except ValueError:
        bad = next(n for n in names if n not in {s.value for s in Scope})
        raise UsageError(f"--scopes: unknown scope '{bad}' (scopes: {known})") from None


async def _serve(
    args: argparse.Namespace,
    db: str,
    tools: dict[str, Tool],
    llm: LLMAdapter | None,
    principal: Principal,
) -> int:
    # Imported here, as in cli_http: the MCP SDK is slow to import and only serving needs it.
    from gateway.maintenance import maintained
    from gateway.mcp_server import build_server
    from gateway.service import LedgerflowService

    async with open_workspace(args, db) as workspace:
        service = await LedgerflowService.open(workspace, tools, llm)
        try:
            server = build_server(
                service,
                lambda _ctx: principal,
                lifespan=lambda: maintained(service, TIMER_INTERVAL_SECONDS),
            )
            logger.info("serving %s on stdio as %s", db, principal.name)
            await server.run_stdio_async()
        finally:
            await service.close()
    return EXIT_OK


def _log_to_stderr() -> None:
    # Configured first, so the SDK's own logging setup (basicConfig) leaves it alone.
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
