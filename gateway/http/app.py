"""The HTTP gateway assembled: MCP over Streamable HTTP (`/mcp`) and legacy SSE (`/sse`,
`/messages/`) behind `McpGuard` (gateway.http.auth), signed webhooks that resume suspended runs
(`/hooks/{trace_id}`, gateway.http.webhooks), health probes (gateway.http.health), the
ledger as a C2SP transparency log (`/tlog/`, gateway.http.tlog), and the auditors' console
(`/audit/`, gateway.http.console).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable

from mcp.server.transport_security import TransportSecuritySettings
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import BaseRoute, Route

from gateway.application.maintenance import maintained
from gateway.application.service import LedgerflowService
from gateway.downstream.pool import DownstreamServers
from gateway.http.auth import McpGuard, local_operator, principal_for_request
from gateway.http.console.app import Console
from gateway.http.console.sessions import Sessions
from gateway.http.health import Probes
from gateway.http.tlog import TransparencyLog
from gateway.http.tokens import TokenStore
from gateway.http.webhooks import Webhooks
from gateway.mcp.server import build_server
from gateway.settings import Settings
from gateway.tools.circuit import CircuitBreakers

Clock = Callable[[], float]


def build_app(
    service: LedgerflowService,
    token_store: TokenStore,
    settings: Settings,
    *,
    breakers: CircuitBreakers | None = None,
    downstream: DownstreamServers | None = None,
    clock: Clock = time.time,
) -> Starlette:
    """The whole HTTP gateway over an open service and token store (the caller closes them)."""
    resolver = principal_for_request if settings.auth_required else local_operator
    server = build_server(service, resolver)
    security = TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=list(settings.allowed_hosts),
        allowed_origins=list(settings.allowed_origins),
    )
    streamable = server.streamable_http_app(transport_security=security, host=settings.host)
    sse = server.sse_app(transport_security=security, host=settings.host)
    probes = Probes(service, token_store, breakers, downstream)
    hooks = Webhooks(service, settings, clock)
    tlog = TransparencyLog(service)
    console = Console(service, Sessions(token_store if settings.auth_required else None))
    routes: list[BaseRoute] = [
        Route("/healthz", probes.healthz, methods=["GET"]),
        Route("/readyz", probes.readyz, methods=["GET"]),
        Route("/tlog/checkpoint", tlog.checkpoint, methods=["GET"]),
        Route("/tlog/tile/{path:path}", tlog.tile, methods=["GET"]),
        Route("/hooks/{trace_id}", hooks.receive, methods=["POST"]),
        console.mount(),
        *streamable.routes,
        *sse.routes,
    ]

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        # One recovery and one timer loop per process; the MCP server's own lifespan would
        # run once per session.
        async with (
            server.session_manager.run(),
            maintained(service, settings.timer_interval_seconds),
        ):
            probes.started = True
            try:
                yield
            finally:
                probes.started = False

    guard = Middleware(
        McpGuard,
        token_store=token_store,
        security=security,
        auth_required=settings.auth_required,
    )
    return Starlette(routes=routes, middleware=[guard], lifespan=lifespan)
