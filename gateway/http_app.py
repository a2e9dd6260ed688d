"""The HTTP gateway: MCP over Streamable HTTP (`/mcp`) and legacy SSE (`/sse`, `/messages/`),
signed webhooks that resume suspended runs (`/hooks/{trace_id}`), and health probes.

Authentication is a Starlette middleware of our own rather than the SDK's TokenVerifier:
`build_server` creates its MCPServer without auth settings, and the SDK's middleware answers
every failure alike, while we must say why (missing, invalid, expired, revoked) and refuse a
token in the query string. Every MCP request is authenticated on its own (a revoked token stops
working mid-session); its Principal rides in the ASGI scope, where `principal_for_request` finds
it through the request the SDK attaches to each message. Scopes are checked by the service, so
a tool outside a token's scopes is a tool error naming the scope it needs.

The Host and Origin allow-lists (DNS-rebinding protection) guard the MCP endpoints, the ones a
browser page could be tricked into calling; webhooks carry signatures, probes nothing secret.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from mcp.server.mcpserver import Context
from mcp.server.transport_security import TransportSecurityMiddleware, TransportSecuritySettings
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.auth import AuthError, TokenStore, bearer_from_headers
from gateway.circuit import CircuitBreakers
from gateway.maintenance import maintained
from gateway.mcp_server import build_server
from gateway.principal import Principal
from gateway.principal import Scope as AuthScope
from gateway.service import Conflict, Denied, LedgerflowService, NotFound, ServiceError
from gateway.settings import Settings
from gateway.webhooks import DEFAULT_TOLERANCE_SECONDS, WebhookSignatureError, verify

logger = logging.getLogger("ledgerflow.http")

PRINCIPAL_KEY = "ledgerflow.principal"  # where the guard leaves the caller in the ASGI scope
SIGNATURE_HEADER = "ledgerflow-signature"
EVENT_ID_HEADER = "ledgerflow-event-id"
MAX_WEBHOOK_BYTES = 1024 * 1024
# Webhooks may only resume runs; the name is what the access envelopes record.
WEBHOOK_PRINCIPAL = Principal("webhook", frozenset({AuthScope.RUN}))
# What a request without a principal gets when auth is on: nothing (fail closed).
NOBODY = Principal("anonymous", frozenset())

Clock = Callable[[], float]


def build_app(
    service: LedgerflowService,
    token_store: TokenStore,
    settings: Settings,
    *,
    breakers: CircuitBreakers | None = None,
    clock: Clock = time.time,
) -> Starlette:
    """The whole HTTP gateway over an open service and token store (the caller closes them)."""
    resolver = principal_for_request if settings.auth_required else _local_operator
    server = build_server(service, resolver)
    security = TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=list(settings.allowed_hosts),
        allowed_origins=list(settings.allowed_origins),
    )
    streamable = server.streamable_http_app(transport_security=security, host=settings.host)
    sse = server.sse_app(transport_security=security, host=settings.host)
    probes = _Probes(service, token_store, breakers)
    hooks = _Webhooks(service, settings, clock)
    routes: list[BaseRoute] = [
        Route("/healthz", probes.healthz, methods=["GET"]),
        Route("/readyz", probes.readyz, methods=["GET"]),
        Route("/hooks/{trace_id}", hooks.receive, methods=["POST"]),
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


def principal_for_request(ctx: Context[Any, Any]) -> Principal:
    """The principal McpGuard authenticated for the HTTP request carrying this MCP message."""
    request = ctx.request_context.request
    scope = getattr(request, "scope", None)
    principal = scope.get(PRINCIPAL_KEY) if isinstance(scope, dict) else None
    return principal if isinstance(principal, Principal) else NOBODY


def _local_operator(_ctx: Context[Any, Any]) -> Principal:
    return Principal.local_operator()


# --- authentication -----------------------------------------------------------------------------


def is_mcp_path(path: str) -> bool:
    return path.rstrip("/") in ("/mcp", "/sse") or path.startswith("/messages/")


class McpGuard:
    """On MCP paths: Host/Origin allow-lists, then the bearer token (never from the query)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        token_store: TokenStore,
        security: TransportSecuritySettings,
        auth_required: bool,
    ) -> None:
        self.app = app
        self.token_store = token_store
        self.security = TransportSecurityMiddleware(security)
        self.auth_required = auth_required

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_mcp_path(scope["path"]):
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        # Before authentication: a rebinding page learns nothing, not even whether auth is on.
        refused = await self.security.validate_request(request, is_post=False)
        if refused is None:
            refused = await self._authenticate(request, scope)
        if refused is not None:
            await refused(scope, receive, send)
            return
        await self.app(scope, receive, send)

    async def _authenticate(self, request: Request, scope: Scope) -> Response | None:
        try:
            token = bearer_from_headers(request.headers, request.query_params)
            if self.auth_required:
                scope[PRINCIPAL_KEY] = await self.token_store.authenticate(token)
        except AuthError as exc:
            return unauthorized(exc)
        return None


def unauthorized(exc: AuthError) -> Response:
    """401 with an RFC 6750 challenge; the message says why and never holds the token."""
    message = str(exc).replace('"', "'")
    challenge = 'Bearer realm="ledgerflow"'
    if exc.reason != "missing":  # RFC 6750 §3.1: no error code when no credentials were sent
        challenge += f', error="invalid_token", error_description="{message}"'
    return JSONResponse(
        {"error": "unauthorized", "reason": exc.reason, "message": str(exc)},
        status_code=401,
        headers={"WWW-Authenticate": challenge},
    )


# --- webhooks -----------------------------------------------------------------------------------


@dataclass
class _Webhooks:
    service: LedgerflowService
    settings: Settings
    clock: Clock

    async def receive(self, request: Request) -> Response:
        """Verify the signature over the raw body, then deliver the event to the run once."""
        secret = self.settings.webhook_secret
        if secret is None:
            return _error(503, "webhooks are not configured: set webhook_secret")
        body = await _bounded_body(request, MAX_WEBHOOK_BYTES)
        if body is None:
            return _error(413, f"webhook body over {MAX_WEBHOOK_BYTES} bytes")
        try:
            verify(
                secret.get_secret_value(),
                request.headers.get(SIGNATURE_HEADER),
                body,
                now=self.clock(),
                tolerance=DEFAULT_TOLERANCE_SECONDS,
            )
        except WebhookSignatureError as exc:
            return _error(401, str(exc), reason=exc.reason)
        try:
            event = json.loads(body)
        except ValueError:
            return _error(400, "the webhook body is not JSON")
        event_id = _event_id(event, request.headers)
        if event_id is None:
            return _error(400, f"no event id: send an 'id' field or a {EVENT_ID_HEADER} header")
        return await self._resume(request.path_params["trace_id"], event, event_id)

    async def _resume(self, trace_id: str, event: Any, event_id: str) -> Response:
        try:
            trace = await self.service.resume_run(
                WEBHOOK_PRINCIPAL, trace_id, event, event_id=event_id
            )
        except NotFound as exc:
            return _error(404, str(exc))
        except Conflict as exc:
            # A redelivery is acknowledged (senders retry until they get a 2xx).
            if await self.service.workspace.journal.event_seen(trace_id, event_id):
                return JSONResponse({"status": "duplicate", "trace_id": trace_id})
            return _error(409, str(exc))
        except Denied as exc:
            return _error(403, str(exc))
        except ServiceError as exc:
            return _error(400, str(exc))
        return JSONResponse({"status": trace.status.value, "trace_id": trace.trace_id})


def _event_id(event: Any, headers: Headers) -> str | None:
    """The body's `id` field, else the event id header."""
    if isinstance(event, dict) and isinstance(event.get("id"), str | int) and event["id"] != "":
        return str(event["id"])
    return headers.get(EVENT_ID_HEADER) or None


async def _bounded_body(request: Request, limit: int) -> bytes | None:
    """The body, or None once it exceeds `limit` bytes (read no further)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _error(status: int, message: str, **extra: str) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


# --- probes -------------------------------------------------------------------------------------


class _Probes:
    def __init__(
        self,
        service: LedgerflowService,
        token_store: TokenStore,
        breakers: CircuitBreakers | None,
    ) -> None:
        self.service = service
        self.token_store = token_store
        self.breakers = breakers
        self.started = False  # set once recovery ran and the timers fire

    async def healthz(self, _: Request) -> Response:
        return JSONResponse({"status": "alive"})

    async def readyz(self, _: Request) -> Response:
        """Ready when the lifespan ran, the database answers and the ledger file is writable.
        An open circuit is reported but does not make the process unready: a restart would not
        mend the tool behind it."""
        checks = {
            "started": self.started,
            "database": await self._database_answers(),
            "ledger_writable": await self._ledger_writable(),
        }
        ready = all(checks.values())
        circuits = self.breakers.states() if self.breakers is not None else {}
        body = {"status": "ready" if ready else "not ready", "checks": checks}
        return JSONResponse({**body, "circuits": circuits}, status_code=200 if ready else 503)

    async def _ledger_writable(self) -> bool:
        try:
            return await self.service.workspace.writable()
        except Exception:
            logger.exception("readiness: cannot tell whether the ledger is writable")
            return False

    async def _database_answers(self) -> bool:
        try:
            return await self.token_store.db.fetchone("SELECT 1") is not None
        except Exception:  # any failure means not ready; the probe must answer regardless
            logger.exception("readiness: the database does not answer")
            return False
