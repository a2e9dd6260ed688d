"""Who an MCP request over HTTP comes from: `McpGuard`, a Starlette middleware of our own
rather than the SDK's TokenVerifier.

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

from typing import Any

from mcp.server.mcpserver import Context
from mcp.server.transport_security import TransportSecurityMiddleware, TransportSecuritySettings
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.application.principal import Principal
from gateway.http.tokens import AuthError, TokenStore, bearer_from_headers

PRINCIPAL_KEY = "ledgerflow.principal"  # where the guard leaves the caller in the ASGI scope
# What a request without a principal gets when auth is on: nothing (fail closed).
NOBODY = Principal("anonymous", frozenset())


def principal_for_request(ctx: Context[Any, Any]) -> Principal:
    """The principal McpGuard authenticated for the HTTP request carrying this MCP message."""
    request = ctx.request_context.request
    scope = getattr(request, "scope", None)
    principal = scope.get(PRINCIPAL_KEY) if isinstance(scope, dict) else None
    return principal if isinstance(principal, Principal) else NOBODY


def local_operator(_ctx: Context[Any, Any]) -> Principal:
    return Principal.local_operator()


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
