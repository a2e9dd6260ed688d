"""The audit console's routes under /audit/: server-rendered, read-only, no script at all.

Every page reads through the application service as the signed-in principal, so each view is
recorded as that principal's `access` envelopes and shows exactly what `get_trace` and
`query_envelopes` show (secrets as refs, erased values as tombstones). Pages are served with a
Content-Security-Policy that allows no script and only this console's own stylesheet.
"""

from __future__ import annotations

import base64
import csv
import datetime as dt
import io
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from gateway.application.principal import Principal
from gateway.application.service import LedgerflowService, ServiceError
from gateway.http.console.sessions import COOKIE, SESSION_SECONDS, Sessions, SignInError
from governance import EnvelopeKind
from governance.checkpoint import note_signers
from governance.errors import LedgerError
from governance.merkle import leaf_hash, verify_consistency, verify_inclusion
from kernel import TraceStatus

ROOT = "/audit/"
HERE = Path(__file__).parent
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
EXPORT_PAGE = 500
Page = Callable[[Request, Principal], Awaitable[Response]]


def _when(seconds: float | None) -> str:
    if not seconds:
        return ""
    return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _micros(value: int | None) -> str:
    return _when(None if value is None else value / 1_000_000)


def _pretty(value: Any) -> str:
    return "" if value is None else json.dumps(value, indent=1, ensure_ascii=False)


def _time(text: str | None, name: str) -> dt.datetime | None:
    if not text:
        return None
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ServiceError(f"{name} '{text}' is not a time such as 2026-12-01T09:30") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


class Console:
    def __init__(self, service: LedgerflowService, sessions: Sessions) -> None:
        self.service = service
        self.sessions = sessions
        self.templates = Jinja2Templates(directory=str(HERE / "templates"))
        self.templates.env.filters["when"] = _when
        self.templates.env.filters["pretty"] = _pretty
        self.templates.env.filters["micros"] = _micros

    def mount(self) -> Mount:
        page = self._page
        routes = [
            Route("/", page(self.runs), methods=["GET"]),
            Route("/runs/{trace_id}", page(self.run), methods=["GET"]),
            Route("/envelopes", page(self.envelopes), methods=["GET"]),
            Route("/checkpoints", page(self.checkpoints), methods=["GET"]),
            Route("/verify", page(self.verify), methods=["GET", "POST"]),
            Route("/proof/{seq:int}", page(self.proof), methods=["GET"]),
            Route("/login", self.login, methods=["GET", "POST"]),
            Route("/logout", self.logout, methods=["POST"]),
            Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
        ]
        return Mount("/audit", routes=routes)

    # --- rendering and sign-in ---------------------------------------------------------

    def _render(self, request: Request, name: str, status: int = 200, **context: Any) -> Response:
        context.setdefault("principal", None)
        context.setdefault("error", None)
        context["root"] = ROOT
        context["signed_in"] = self.sessions.required
        response = self.templates.TemplateResponse(request, name, context, status_code=status)
        response.headers.update(SECURITY_HEADERS)
        return response

    def _page(self, handler: Page) -> Callable[[Request], Awaitable[Response]]:
        async def guarded(request: Request) -> Response:
            principal = await self.sessions.principal(request.cookies.get(COOKIE))
            if principal is None:
                return RedirectResponse(f"{ROOT}login", status_code=303)
            try:
                return await handler(request, principal)
            except ServiceError as exc:
                return self._render(
                    request, "base.html", 400, title="Refused", principal=principal, error=str(exc)
                )

        return guarded

    async def login(self, request: Request) -> Response:
        if request.method == "GET":
            return self._render(request, "login.html", title="Sign in")
        form = await request.form()
        try:
            session = await self.sessions.sign_in(str(form.get("token", "")))
        except SignInError as exc:
            return self._render(request, "login.html", 401, title="Sign in", error=str(exc))
        response = RedirectResponse(ROOT, status_code=303)
        response.set_cookie(
            COOKIE,
            session,
            max_age=SESSION_SECONDS,
            path=ROOT,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    async def logout(self, request: Request) -> Response:
        self.sessions.sign_out(request.cookies.get(COOKIE))
        response = RedirectResponse(f"{ROOT}login", status_code=303)
        response.delete_cookie(COOKIE, path=ROOT)
        return response

    # --- pages ---------------------------------------------------------------------------

    async def runs(self, request: Request, principal: Principal) -> Response:
        query = request.query_params
        if query.get("trace_id"):
            return RedirectResponse(f"{ROOT}runs/{query['trace_id'].strip()}", status_code=303)
        status = TraceStatus(query["status"]) if query.get("status") in set(TraceStatus) else None
        arguments: dict[str, Any] = {
            "status": status,
            "program": query.get("program") or None,
            "since": _time(query.get("since"), "since"),
            "until": _time(query.get("until"), "until"),
        }
        filters = {k: query.get(k) for k in ("status", "program", "since", "until")}
        if query.get("format") in ("csv", "jsonl"):
            runs = await self._all_runs(principal, arguments)
            return _export([_run_row(run) for run in runs], RUN_COLUMNS, query["format"], "runs")
        page = await self.service.list_traces(
            principal, limit=50, cursor=query.get("cursor") or None, **arguments
        )
        return self._render(
            request,
            "runs.html",
            title="Runs",
            principal=principal,
            runs=page.items,
            statuses=[s.value for s in TraceStatus],
            filters=filters,
            next_cursor=page.next_cursor,
            next_link=_link(ROOT, filters, cursor=page.next_cursor),
            export_link=_link(ROOT, filters),
        )

    async def run(self, request: Request, principal: Principal) -> Response:
        trace_id = request.path_params["trace_id"]
        trace = await self.service.get_trace(principal, trace_id)
        envelopes = await self._all_envelopes(principal, {"execution_id": trace_id})
        by_step = {e.step_id: e for e in envelopes if e.kind is EnvelopeKind.STEP and e.step_id}
        signed = await self._checked(principal, envelopes)
        return self._render(
            request,
            "run.html",
            title=f"Run {trace_id}",
            principal=principal,
            trace=trace,
            envelopes=envelopes,
            by_step=by_step,
            signed=signed,
        )

    async def envelopes(self, request: Request, principal: Principal) -> Response:
        query = request.query_params
        filters = {k: query.get(k) for k in ("execution", "kind", "policy", "since", "until")}
        arguments = self._envelope_filters(filters)
        if query.get("format") in ("csv", "jsonl"):
            rows = [_envelope_row(e) for e in await self._all_envelopes(principal, arguments)]
            return _export(rows, ENVELOPE_COLUMNS, query["format"], "envelopes")
        page = await self.service.query_envelopes(
            principal, limit=100, cursor=query.get("cursor") or None, **arguments
        )
        return self._render(
            request,
            "envelopes.html",
            title="Envelopes",
            principal=principal,
            envelopes=page.items,
            kinds=[k.value for k in EnvelopeKind],
            filters=filters,
            next_cursor=page.next_cursor,
            next_link=_link(f"{ROOT}envelopes", filters, cursor=page.next_cursor),
            export_link=_link(f"{ROOT}envelopes", filters),
        )

    async def checkpoints(self, request: Request, principal: Principal) -> Response:
        records = await self.service.list_checkpoints(principal)
        rows, previous = [], None
        for record in records:
            consistent, text = True, "the first"
            if previous is not None:
                try:
                    proof = self.service.workspace.ledger.consistency_proof(
                        previous.tree_size, record.tree_size
                    )
                    verify_consistency(
                        previous.tree_size, record.tree_size, proof, previous.root, record.root
                    )
                    text = f"yes, extends size {previous.tree_size}"
                except LedgerError as exc:
                    consistent, text = False, f"NO: {exc}"
            rows.append(
                {
                    "index": record.index,
                    "tree_size": record.tree_size,
                    "root_b64": base64.b64encode(record.root).decode(),
                    "signers": ", ".join(
                        f"{name} ({key.hex()})" for name, key in note_signers(record.note)
                    ),
                    "consistent": consistent,
                    "consistent_text": text,
                    "at": record.created_at,
                }
            )
            previous = record
        return self._render(
            request, "checkpoints.html", title="Checkpoints", principal=principal, checkpoints=rows
        )

    async def verify(self, request: Request, principal: Principal) -> Response:
        keys, report = "", None
        if request.method == "POST":
            form = await request.form()
            keys = str(form.get("keys", ""))
            given = [line.strip() for line in keys.splitlines() if line.strip()]
            report = await self.service.verify_ledger(principal, given or None)
        return self._render(
            request,
            "verify.html",
            title="Verify now",
            principal=principal,
            keys=keys,
            report=report,
        )

    async def proof(self, request: Request, principal: Principal) -> Response:
        seq = request.path_params["seq"]
        bundle = await self.service.get_proof(principal, seq)
        headers = {
            **SECURITY_HEADERS,
            "Content-Disposition": f'attachment; filename="proof-{seq}.json"',
        }
        return Response(
            json.dumps(bundle, indent=2), media_type="application/json", headers=headers
        )

    # --- helpers -------------------------------------------------------------------------

    @staticmethod
    def _envelope_filters(filters: dict[str, str | None]) -> dict[str, Any]:
        kind = filters.get("kind")
        return {
            "execution_id": filters.get("execution") or None,
            "kind": EnvelopeKind(kind) if kind in set(EnvelopeKind) else None,
            "policy_hash": filters.get("policy") or None,
            "since": _time(filters.get("since"), "since"),
            "until": _time(filters.get("until"), "until"),
        }

    async def _all_runs(self, principal: Principal, arguments: dict[str, Any]) -> list[Any]:
        return await _every(
            lambda cursor: self.service.list_traces(
                principal, limit=EXPORT_PAGE, cursor=cursor, **arguments
            )
        )

    async def _all_envelopes(self, principal: Principal, arguments: dict[str, Any]) -> list[Any]:
        return await _every(
            lambda cursor: self.service.query_envelopes(
                principal, limit=EXPORT_PAGE, cursor=cursor, **arguments
            )
        )

    async def _checked(self, principal: Principal, envelopes: list[Any]) -> str:
        """Each envelope shown checked here: it hashes to its entry hash, and an inclusion
        proof leads from it to the root of the latest signed checkpoint."""
        records = await self.service.list_checkpoints(principal)
        if not records:
            return "No checkpoint is signed yet."
        last = records[-1]
        ledger = self.service.workspace.ledger
        covered = [e for e in envelopes if e.seq < last.tree_size]
        for envelope in covered:
            if not envelope.hash_ok():
                return f"Envelope seq {envelope.seq} does NOT hash to its entry hash."
            try:
                proof = ledger.inclusion_proof(envelope.seq, last.tree_size)
                leaf = leaf_hash(bytes.fromhex(envelope.entry_hash))
                verify_inclusion(leaf, envelope.seq, last.tree_size, proof, last.root)
            except LedgerError as exc:
                return f"Envelope seq {envelope.seq} is NOT in the signed ledger: {exc}"
        later = len(envelopes) - len(covered)
        pending = f"; {later} more after it, not yet signed" if later else ""
        return (
            f"Verified: {len(covered)} of this run's envelopes hash to their entry hashes and "
            f"are in the ledger signed up to seq {last.tree_size - 1} (checkpoint "
            f"{last.index}){pending}."
        )


async def _every(fetch: Callable[[str | None], Awaitable[Any]]) -> list[Any]:
    """Every item of a paged listing, page after page."""
    found: list[Any] = []
    cursor = None
    while True:
        page = await fetch(cursor)
        found += page.items
        cursor = page.next_cursor
        if cursor is None:
            return found


def _link(base: str, filters: dict[str, str | None], **extra: str | None) -> str:
    pairs = {k: v for k, v in {**filters, **extra}.items() if v}
    return f"{base}?{urlencode(pairs)}"


def _signers(note: bytes) -> list[str]:
    names = []
    for line in note.decode().splitlines():
        if line.startswith("\u2014 "):
            name, _, encoded = line[2:].partition(" ")
            key_id = base64.b64decode(encoded)[:4].hex()
            names.append(f"{name} ({key_id})")
    return names


RUN_COLUMNS = ("trace_id", "program_name", "program_hash", "status", "started_at",
               "updated_at", "error")  # fmt: skip
ENVELOPE_COLUMNS = ("seq", "kind", "execution_id", "step_id", "status", "recorded_at",
                    "policy_hash", "canonical_snapshot_hash", "entry_hash", "prev_hash",
                    "payload")  # fmt: skip


def _run_row(run: Any) -> dict[str, Any]:
    return {name: getattr(run, name) for name in RUN_COLUMNS} | {"status": run.status.value}


def _envelope_row(envelope: Any) -> dict[str, Any]:
    return envelope.model_dump(mode="json", include=set(ENVELOPE_COLUMNS))  # type: ignore[no-any-return]


def _export(rows: list[dict[str, Any]], columns: tuple[str, ...], form: str, what: str) -> Response:
    """Rows as CSV (nested values as JSON) or JSON Lines, for download."""
    if form == "jsonl":
        text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        media, name = "application/jsonl", f"{what}.jsonl"
    else:
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(columns)
        for row in rows:
            writer.writerow([_cell(row.get(column)) for column in columns])
        text, media, name = out.getvalue(), "text/csv", f"{what}.csv"
    headers = {**SECURITY_HEADERS, "Content-Disposition": f'attachment; filename="{name}"'}
    return Response(text, media_type=media, headers=headers)


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    return json.dumps(value, ensure_ascii=False) if isinstance(value, dict | list) else value
