"""`ledgerflow audit-ui --db PATH`: the audit console over a local ledger file, on loopback.

For an auditor handed a copy of a ledger: no token (only this machine can reach it, and only
as `local:<user>` with the audit and read scopes), the same pages as a server's `/audit/`. The
ledger is opened for writing, because each page view is recorded as an access envelope, as
every read through the application service is.
"""

from __future__ import annotations

import argparse
from typing import Any

from gateway.cli.common import add_db_option, existing_db, open_service, run_async
from gateway.cli.errors import EXIT_OK, UsageError
from gateway.settings import LOOPBACK_HOSTS

DEFAULT_PORT = 8780


def add_commands(commands: Any) -> None:
    sub = commands.add_parser(
        "audit-ui",
        help="the audit console over a local ledger, on loopback",
        description="Serve the audit console (runs, envelopes, checkpoints, proofs, verify) "
        "over the ledger at --db on a loopback address, without tokens.",
    )
    sub.add_argument("--host", default="127.0.0.1", help="a loopback address (default 127.0.0.1)")
    sub.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"default {DEFAULT_PORT}")
    add_db_option(sub)
    sub.set_defaults(handler=cmd_audit_ui)


def cmd_audit_ui(args: argparse.Namespace) -> int:
    if args.host not in LOOPBACK_HOSTS:
        raise UsageError(
            f"--host {args.host}: audit-ui has no sign-in, so it binds only a loopback address "
            f"({', '.join(LOOPBACK_HOSTS)}); serve the ledger with `serve --transport http` "
            "for remote auditors"
        )
    return run_async(_serve(args, existing_db(args)))


async def _serve(args: argparse.Namespace, db: str) -> int:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.responses import RedirectResponse
    from starlette.routing import Route

    from gateway.http.console.app import ROOT, Console
    from gateway.http.console.sessions import Sessions

    async def home(_: Any) -> RedirectResponse:
        return RedirectResponse(ROOT)

    async with open_service(args, db) as service:
        console = Console(service, Sessions(None))
        app = Starlette(routes=[Route("/", home), console.mount()])
        print(f"audit console for {db}: http://{args.host}:{args.port}{ROOT}", flush=True)
        config = uvicorn.Config(app, host=args.host, port=args.port, access_log=False)
        await uvicorn.Server(config).serve()
    return EXIT_OK
