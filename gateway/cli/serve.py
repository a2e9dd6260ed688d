"""`ledgerflow serve`: the ledger served to MCP clients, on stdio (one local operator) or over
HTTP (`--transport http`; `ledgerflow serve-http` is the same command).

On stdio, stdout carries the protocol and nothing else: logs go to stderr, tool modules are
imported with Python's stdout pointed at stderr, and while serving the SDK points file
descriptor 1 at stderr too, so a stray print from a tool cannot corrupt a message.

Over HTTP, settings come from defaults < ledgerflow.toml (or --config) < LEDGERFLOW_* < flags.
Authentication is on unless the settings turn it off, and then only a loopback address may be
bound (`Settings.refuse_unsafe_bind`). uvicorn's access log is off: it would print URLs, and a
client may have put a token in one (the gateway refuses it, but the log would keep it).

Either way, before the first request the server continues the runs a dead process left
RUNNING, and while it serves, due timers fire every second (`gateway.application.maintenance`).
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from gateway.application.principal import Principal, Scope
from gateway.cli.common import add_db_option, db_path, open_service, run_async
from gateway.cli.errors import EXIT_OK, UsageError
from gateway.cli.runtime import Runtime, add_runtime_options, settings_llm, settings_tools
from gateway.settings import Settings, SettingsError, load_settings
from governance.storage.ledger_port import Synchronous
from kernel import LLMAdapter
from kernel.clock import SystemClock

TIMER_INTERVAL_SECONDS = 1.0
logger = logging.getLogger("ledgerflow.serve")

_EPILOG = """\
examples:
  ledgerflow serve --db ledger.db --tools examples.payments:TOOLS          (an MCP client's command)
  ledgerflow token create --name ci --scopes run,read --db ledger.db
  ledgerflow serve --transport http --db ledger.db --tools examples.payments:TOOLS --port 8765

On stdio the local operator gets every scope unless --scopes narrows them (run, read, audit,
admin, tools). Over HTTP, MCP clients connect to http://HOST:PORT/mcp (Streamable HTTP) or /sse
(legacy SSE) with 'Authorization: Bearer <token>'. Webhooks: POST /hooks/TRACE_ID signed with
webhook_secret. Probes: GET /healthz, GET /readyz.
"""


def add_commands(commands: Any) -> None:
    serve = commands.add_parser(
        "serve",
        help="serve the ledger to MCP clients (stdio, or HTTP)",
        description="Serve runs, programs and the audit ledger as MCP tools. With --transport "
        "stdio (the default)\nthe client starts this command and speaks MCP over its "
        "stdin/stdout; with --transport http\nremote clients connect with bearer tokens, and "
        "signed webhooks resume runs.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument("--transport", choices=["stdio", "http"], default="stdio")
    _add_serve_options(serve)
    alias = commands.add_parser(
        "serve-http",
        help="the same as `serve --transport http`",
        description="The same as `ledgerflow serve --transport http`.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    alias.set_defaults(transport="http")
    _add_serve_options(alias)


def _add_serve_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help="http: address to bind (default: 127.0.0.1)")
    parser.add_argument(
        "--port", type=int, help="http: port to bind; 0 for any free port (default: 8765)"
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="settings file (default: ./ledgerflow.toml); on stdio only its [servers] apply",
    )
    parser.add_argument(
        "--synchronous",
        choices=("full", "normal"),
        help="durability of each commit: full (fsync; survives a power loss) or normal (no "
        "fsync per commit; survives a process crash). Default: the settings' synchronous, full",
    )
    parser.add_argument(
        "--scopes",
        metavar="LIST",
        help="stdio: comma-separated scopes of the local operator (default: all)",
    )
    add_runtime_options(parser)
    add_db_option(parser)
    parser.set_defaults(handler=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    if args.transport == "http":
        return _serve_http(args)
    _log_to_stderr()
    principal = Principal.local_operator(parse_scopes(args.scopes))
    runtime = Runtime(args, quiet_imports=True)
    return run_async(_serve_stdio(args, db_path(args), runtime, principal))


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


async def _serve_stdio(
    args: argparse.Namespace, db: str, runtime: Runtime, principal: Principal
) -> int:
    # Imported here: the MCP SDK is slow to import and only serving needs it.
    from gateway.application.maintenance import maintained
    from gateway.mcp.server import build_server

    level = _synchronous(args, None)
    async with (
        open_service(args, db, runtime.tools, runtime.llm, synchronous=level) as service,
        runtime.attached(service),
    ):
        server = build_server(
            service,
            lambda _ctx: principal,
            lifespan=lambda: maintained(service, TIMER_INTERVAL_SECONDS),
        )
        logger.info("serving %s on stdio as %s (synchronous=%s)", db, principal.name, level)
        await server.run_stdio_async()
    return EXIT_OK


# --- over HTTP --------------------------------------------------------------------------------


def _serve_http(args: argparse.Namespace) -> int:
    if args.scopes is not None:
        raise UsageError("--scopes is for stdio; over HTTP each token carries its scopes")
    settings = http_settings(args)
    try:
        settings.refuse_unsafe_bind()  # before anything is opened
    except SettingsError as exc:
        raise UsageError(str(exc)) from None
    _log_to_stderr()
    runtime = Runtime(args, quiet_imports=True, settings=settings)
    runtime.tools = settings_tools(settings) | runtime.tools
    llm = runtime.llm or settings_llm(settings)
    return run_async(_serve_http_async(args, settings, runtime, llm))


def http_settings(args: argparse.Namespace) -> Settings:
    """The settings, with the flags given as the top layer; problems become a UsageError."""
    overrides = {"transport": "http", "host": args.host, "port": args.port, "db": args.db}
    try:
        return load_settings(args.config, overrides)
    except SettingsError as exc:
        raise UsageError(str(exc)) from None


async def _serve_http_async(
    args: argparse.Namespace, settings: Settings, runtime: Runtime, llm: LLMAdapter | None
) -> int:
    # Imported here: the MCP SDK and the web server take a second to import, and only the
    # serving commands need them.
    import uvicorn

    from gateway.http.app import build_app
    from gateway.http.tokens import TokenStore
    from gateway.tools.circuit import CircuitBreakers

    breakers = CircuitBreakers(
        settings.circuit.threshold, settings.circuit.reset_seconds, clock=SystemClock()
    )
    wrapped = breakers.wrap_all(runtime.tools)
    lease, level = settings.lease_seconds, _synchronous(args, settings)
    async with (
        open_service(
            args,
            settings.db,
            wrapped,
            llm,
            lease_seconds=lease,
            synchronous=level,
        ) as service,
        runtime.attached(service, wrap=breakers.wrap) as downstream,
    ):
        workspace = service.workspace
        # The settings' policy becomes the ledger's active policy: its hash is on every
        # envelope from now on, and every entry point (the command line too) is held to it.
        await workspace.ledger.set_policy(settings.policy.snapshot("serve-http"))
        async with workspace.operational(TokenStore) as tokens:
            app = build_app(service, tokens, settings, breakers=breakers, downstream=downstream)
            config = uvicorn.Config(app, host=settings.host, port=settings.port, access_log=False)
            auth = "bearer tokens" if settings.auth_required else "NO authentication"
            logger.info(
                "serving %s over HTTP with %s (synchronous=%s)", workspace.where, auth, level
            )
            await uvicorn.Server(config).serve()
    return EXIT_OK


def _synchronous(args: argparse.Namespace, settings: Settings | None) -> Synchronous:
    """--synchronous, else the settings' level (HTTP; stdio reads only [servers]), else FULL."""
    if args.synchronous is not None:
        return "NORMAL" if args.synchronous == "normal" else "FULL"
    return "FULL" if settings is None else settings.synchronous


def _log_to_stderr() -> None:
    # Configured first, so the SDK's own logging setup (basicConfig) leaves it alone.
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
