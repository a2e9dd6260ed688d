"""What a serving process does beside answering requests: recover runs a dead process left
RUNNING, then keep the durable timers firing and each new checkpoint going to the witnesses
until it stops. With leases (several instances on
one PostgreSQL database) it also looks, every half lease, for runs whose instance died, and
takes them over."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from gateway.application.principal import Principal
from gateway.application.service import LedgerflowService
from gateway.application.workspace import LedgerBusyError
from kernel import LedgerflowError

logger = logging.getLogger("ledgerflow.gateway")


async def _recover(service: LedgerflowService, principal: Principal) -> None:
    try:
        recovered = await service.recover(principal, background=True)
        if recovered:
            logger.info("recovered %d run(s) left RUNNING", len(recovered))
    except LedgerBusyError:
        logger.warning("other processes write to this ledger: recovery skipped")
    except LedgerflowError:
        # Serving still helps (traces, audits); the runs stay RUNNING for a later recovery.
        logger.exception("recovery failed (are the runs' tools given with --tools?)")


async def _recover_forever(
    service: LedgerflowService, principal: Principal, interval: float
) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            await _recover(service, principal)
        except Exception:  # the database may be away for a while: try again next time
            logger.exception("looking for runs to take over failed; retrying")


async def _witness_forever(
    service: LedgerflowService, principal: Principal, interval: float
) -> None:
    """Each new checkpoint goes to the witnesses; a refusal is logged (and kept)."""
    while True:
        await asyncio.sleep(interval)
        try:
            for result in await service.witness_checkpoint(principal, background=True):
                if result.outcome in ("refused", "failed"):
                    logger.error("witness %s: %s", result.witness, result.detail)
                elif result.outcome == "cosigned":
                    logger.info("witness %s cosigned size %d", result.witness, result.tree_size)
        except Exception:  # the database or a witness may be away: try again next time
            logger.exception("submitting the checkpoint to the witnesses failed; retrying")


@contextlib.asynccontextmanager
async def maintained(service: LedgerflowService, interval: float) -> AsyncIterator[None]:
    """Recover dead runs first, then keep the timers firing (and, with leases, keep taking
    over the runs of instances that died) while the app serves. It acts as the person who
    started the process (`Principal.local_operator`): recorded, and under the policy."""
    principal = Principal.local_operator()
    await _recover(service, principal)
    tasks = [
        asyncio.create_task(service.run_timers(principal, interval), name="ledgerflow timers"),
        asyncio.create_task(_witness_forever(service, principal, interval), name="witnesses"),
    ]
    lease = service.workspace.journal.lease
    if lease is not None:
        tasks.append(
            asyncio.create_task(
                _recover_forever(service, principal, lease.seconds / 2),
                name="ledgerflow take-over",
            )
        )
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
