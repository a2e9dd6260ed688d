"""Health probes: `GET /healthz` (the process answers) and `GET /readyz` (it can serve)."""

from __future__ import annotations

import logging

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.application.service import LedgerflowService
from gateway.downstream.pool import DownstreamServers
from gateway.http.tokens import TokenStore
from gateway.tools.circuit import CircuitBreakers

logger = logging.getLogger("ledgerflow.http")


class Probes:
    def __init__(
        self,
        service: LedgerflowService,
        token_store: TokenStore,
        breakers: CircuitBreakers | None,
        downstream: DownstreamServers | None = None,
    ) -> None:
        self.service = service
        self.token_store = token_store
        self.breakers = breakers
        self.downstream = downstream
        self.started = False  # set once recovery ran and the timers fire

    async def healthz(self, _: Request) -> Response:
        return JSONResponse({"status": "alive"})

    async def readyz(self, _: Request) -> Response:
        """Ready when the lifespan ran, the database answers and the ledger file is writable.
        An open circuit, or an optional downstream server that is down, is reported but does
        not make the process unready: a restart would not mend the tool behind it. A required
        server that is down does."""
        checks = {
            "started": self.started,
            "database": await self._database_answers(),
            "ledger_writable": await self._ledger_writable(),
        }
        servers = self.downstream.states() if self.downstream is not None else {}
        required = [s for s in servers.values() if s["required"]]
        if required:
            checks["required_servers"] = all(s["state"] == "ready" for s in required)
        ready = all(checks.values())
        circuits = self.breakers.states() if self.breakers is not None else {}
        body = {
            "status": "ready" if ready else "not ready",
            "checks": checks,
            "synchronous": self.service.workspace.synchronous,
        }
        return JSONResponse(
            {**body, "circuits": circuits, "servers": servers}, status_code=200 if ready else 503
        )

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
