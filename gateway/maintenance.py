"""What a serving process does beside answering requests: recover runs a dead process left
RUNNING, then keep the durable timers firing until it stops."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from gateway.service import LedgerflowService
from kernel import LedgerflowError

logger = logging.getLogger("ledgerflow.gateway")


@contextlib.asynccontextmanager
async def maintained(service: LedgerflowService, interval: float) -> AsyncIterator[None]:
    """Recover dead runs first, then keep the timers firing while the app serves."""
    try:
        recovered = await service.recover()
        if recovered:
            logger.info("recovered %d run(s) left RUNNING", len(recovered))
    except LedgerflowError:
        # Serving still helps (traces, audits); the runs stay RUNNING for a later recovery.
        logger.exception("recovery failed (are the runs' tools given with --tools?)")
    timers = asyncio.create_task(service.run_timers(interval), name="ledgerflow timers")
    try:
        yield
    finally:
        timers.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await timers
