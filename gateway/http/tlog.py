"""The ledger served read-only as a C2SP transparency log under `/tlog/`: `checkpoint` (the
latest signed note) and `tile/<L>/<N>[.p/<W>]`, `tile/entries/<N>[.p/<W>]` (governance.tiles).

Public, as transparency logs are: hashes and signatures only. Full tiles never change, so they
may be cached for good; the checkpoint moves, so it is not cached.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from gateway.application.service import LedgerflowService

IMMUTABLE = "public, max-age=31536000, immutable"


class TransparencyLog:
    def __init__(self, service: LedgerflowService) -> None:
        self.service = service

    async def checkpoint(self, _: Request) -> Response:
        note = await self.service.tlog_checkpoint()
        if note is None:
            return PlainTextResponse("the log is empty\n", status_code=404)
        return Response(
            note,
            media_type="text/plain; charset=utf-8",
            headers={"Cache-Control": "no-cache"},
        )

    async def tile(self, request: Request) -> Response:
        path = request.path_params["path"]
        data = await self.service.tlog_tile(path)
        if data is None:
            return PlainTextResponse(f"no tile {path}\n", status_code=404)
        partial = ".p/" in path
        cache = "no-cache" if partial else IMMUTABLE
        return Response(
            data, media_type="application/octet-stream", headers={"Cache-Control": cache}
        )
