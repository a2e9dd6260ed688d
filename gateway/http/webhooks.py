"""`POST /hooks/{trace_id}`: a signed webhook delivers an event to a suspended run, once.

The signature covers the raw body (`gateway.http.webhook_signatures`); the event id (the
body's `id`, else the Ledgerflow-Event-Id header) makes redeliveries harmless: a sender
retrying until it gets a 2xx is told "duplicate", and the run continued only once. The
webhook acts as the principal `webhook`, which may only resume runs.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.application.principal import Principal, Scope
from gateway.application.service import Conflict, Denied, LedgerflowService, NotFound, ServiceError
from gateway.http.webhook_signatures import DEFAULT_TOLERANCE_SECONDS, WebhookSignatureError, verify
from gateway.settings import Settings

SIGNATURE_HEADER = "ledgerflow-signature"
EVENT_ID_HEADER = "ledgerflow-event-id"
MAX_WEBHOOK_BYTES = 1024 * 1024
# Webhooks may only resume runs; the name is what the access envelopes record.
WEBHOOK_PRINCIPAL = Principal("webhook", frozenset({Scope.RUN}))

Clock = Callable[[], float]


@dataclass
class Webhooks:
    service: LedgerflowService
    settings: Settings
    clock: Clock

    async def receive(self, request: Request) -> Response:
        """Verify the signature over the raw body, then deliver the event to the run once."""
        secret = self.settings.webhook_secret
        if secret is None:
            return error_response(503, "webhooks are not configured: set webhook_secret")
        body = await _bounded_body(request, MAX_WEBHOOK_BYTES)
        if body is None:
            return error_response(413, f"webhook body over {MAX_WEBHOOK_BYTES} bytes")
        try:
            verify(
                secret.get_secret_value(),
                request.headers.get(SIGNATURE_HEADER),
                body,
                now=self.clock(),
                tolerance=DEFAULT_TOLERANCE_SECONDS,
            )
        except WebhookSignatureError as exc:
            return error_response(401, str(exc), reason=exc.reason)
        try:
            event = json.loads(body)
        except ValueError:
            return error_response(400, "the webhook body is not JSON")
        event_id = _event_id(event, request.headers)
        if event_id is None:
            return error_response(
                400, f"no event id: send an 'id' field or a {EVENT_ID_HEADER} header"
            )
        return await self._resume(request.path_params["trace_id"], event, event_id)

    async def _resume(self, trace_id: str, event: Any, event_id: str) -> Response:
        try:
            trace = await self.service.resume_run(
                WEBHOOK_PRINCIPAL, trace_id, event, event_id=event_id
            )
        except NotFound as exc:
            return error_response(404, str(exc))
        except Conflict as exc:
            # A redelivery is acknowledged (senders retry until they get a 2xx).
            if await self.service.workspace.journal.event_seen(trace_id, event_id):
                return JSONResponse({"status": "duplicate", "trace_id": trace_id})
            return error_response(409, str(exc))
        except Denied as exc:
            return error_response(403, str(exc))
        except ServiceError as exc:
            return error_response(400, str(exc))
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


def error_response(status: int, message: str, **extra: str) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)
