"""The kernel's Journal port on the governance ledger: one envelope per executed step.

The ledger is both the durable execution log and the audit log. Every step record is appended as
an envelope (committed before the VM runs the next step) whose payload carries the output as
projected for the trace target, with what is needed to rebuild the run: a run that was RUNNING
when its process died, or SUSPENDED in another process, is rebuilt from its envelopes, and the
rebuilt state hashes must equal the recorded ones (a mismatch is an error, never a guess).

The run index (status, cursor, timer) lives in `governance.runs`; envelopes are written first,
so an index row can lag behind its envelopes after a crash, never run ahead of them, and
`running_runs` repairs the one lag that matters (a suspension whose row still says RUNNING).

With a `Lease` (several instances on one PostgreSQL database), every run this journal starts or
claims is leased to its instance, `renew_leases` (called by `keep_leases`, or by the caller's
own loop) extends them, and `running_runs` only takes over runs whose lease expired. A run whose
lease was lost (another instance took it over, or the leases could not be renewed before they
expired) is fenced: the next write this journal would make for it raises `LeaseLostError`, so
the run stops here instead of running on in two places. What can still happen twice is the
step in flight when the lease was lost, as after a crash; keep `lease_seconds` well above the
longest pause a process may take (a GC, a stopped VM).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from governance.envelope import EnvelopeKind, GovernanceEnvelope
from governance.errors import LedgerError
from governance.ledger import Ledger
from governance.runs import RunRow, RunStore
from governance.storage.database_url import DatabaseUrl
from governance.storage.ledger_port import Statement
from governance.storage.sql_ledger import SqlLedgerStore
from kernel.capability import SecretResolver
from kernel.clock import Clock, SystemClock
from kernel.errors import ResumeError
from kernel.fsm import successor
from kernel.program import Program
from kernel.projection import Projector
from kernel.statuses import StepStatus, StepType, TraceStatus
from kernel.timers import deadline
from kernel.trace import Metrics, StepRecord, Trace, Usage

_STEP_KINDS = (EnvelopeKind.STEP, EnvelopeKind.RESUME)
# Step types whose execution reaches nothing outside the runtime (parallel blocks hold tool or
# llm steps only).
_EFFECT_FREE = frozenset({StepType.CONDITION.value, StepType.WAIT.value})
# The task whose runs' ends ride in its next append (LedgerJournal.run_ends_riding).
_RUN_ENDS_RIDE: ContextVar[asyncio.Task[Any] | None] = ContextVar(
    "ledgerflow_run_ends_ride", default=None
)
logger = logging.getLogger("ledgerflow.journal")


class LeaseLostError(LedgerError):
    """This instance no longer holds the lease of a run: another one continues it."""


@dataclass(frozen=True, slots=True)
class Lease:
    """The lease an instance takes on the runs it executes: `owner` names the instance (unique
    among the live ones), `seconds` is how long a lease lasts without renewal."""

    owner: str
    seconds: float = 15.0

    def __post_init__(self) -> None:
        if not self.owner:
            raise ValueError("a lease needs an owner id")
        if not self.seconds > 0:
            raise ValueError(f"lease seconds must be positive, got {self.seconds}")


class LedgerJournal:
    def __init__(
        self,
        ledger: Ledger,
        runs: RunStore,
        *,
        secrets: SecretResolver | None = None,
        clock: Clock | None = None,
        lease: Lease | None = None,
    ) -> None:
        self.ledger = ledger
        self.runs = runs
        self.projector = Projector(secrets)
        self.clock = clock if clock is not None else SystemClock()
        self.lease = lease
        # A run's index rows ride in its envelopes' commits when both live in one database.
        store = ledger.store
        self._one_commit = isinstance(store, SqlLedgerStore) and store.holds(
            runs.dialect, runs.db.where
        )
        self._held: set[str] = set()  # runs leased to this journal and executed here
        self._lost: set[str] = set()
        self._renewed_at = time.monotonic()
        self._events: dict[str, str] = {}  # event id of a resume, until its envelope is stored
        self._keyed: set[str] = set()  # runs bound to an idempotency key, until they start
        # Called (in a task of its own) for a run held here that another instance was asked to
        # cancel: the gateway sets it to its VM's cancel.
        self.on_cancel: Callable[[str, str], Awaitable[object]] | None = None
        self._cancelling: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @classmethod
    async def open(
        cls, ledger: Ledger, path: str | os.PathLike[str], **kwargs: Any
    ) -> LedgerJournal:
        """A journal over `ledger` whose run index lives in the database at `path` (a SQLite
        file, or the PostgreSQL database of the ledger, whose pool it shares)."""
        url = DatabaseUrl.parse(os.fspath(path))
        if url.path is not None:
            runs = RunStore.in_file(url.path)
        else:
            pool = getattr(ledger.store, "pool", None)
            if pool is None:
                raise LedgerError(f"the run index at {url} needs the ledger in that database")
            from governance.storage.postgres_database import PostgresDatabase

            runs = RunStore(PostgresDatabase(pool, str(url)))
        await runs.open()
        return cls(ledger, runs, **kwargs)

    async def close(self) -> None:
        await self.runs.close()

    # --- writing (the VM calls these in order) --------------------------------------------

    async def run_started(self, trace: Trace, program: dict[str, Any]) -> None:
        owner, until = self._lease_terms()
        index_row = RunStore.started_statements(
            trace.trace_id,
            trace.program_hash,
            trace.program_name,
            program,
            trace.started_at,
            trace.context,
            trace.initial_hash,
            owner=owner,
            lease_until=until,
        )
        if not self._one_commit:
            await self.runs.write(index_row)
            index_row = []
        row = RunRow(
            trace.trace_id,
            trace.program_hash,
            trace.program_name,
            TraceStatus.RUNNING.value,
            trace.started_at,
            trace.context,
            trace.initial_hash,
            None,
            None,
            None,
            None,
        )
        if self._start_may_ride(trace.trace_id, program):
            # Nothing of this run can reach the world before its next commit (its steps are
            # decisions and waits only): its start rides there, and a crash first leaves no
            # trace of a run that did nothing and answered nobody.
            self.ledger.append_riding(*self._started_envelope(row), also=index_row)
            return
        await self._append_started(row, also=index_row)
        # Held (its lease renewed) only once its index row is stored: a renewal that found no
        # row would take the run for lost.
        self._hold(trace.trace_id)

    def _start_may_ride(self, trace_id: str, program: dict[str, Any]) -> bool:
        """A run's start may wait for its next commit when the run has no step with an effect
        outside the runtime (no tool or llm step), its index row shares that commit, no lease
        must be held from the start, and no idempotency key was bound to it (a concurrent
        caller with that key must find the run)."""
        if not self._one_commit or self.lease is not None or trace_id in self._keyed:
            self._keyed.discard(trace_id)
            return False
        steps = program.get("steps")
        return isinstance(steps, list) and all(
            isinstance(step, dict) and step.get("type") in _EFFECT_FREE for step in steps
        )

    async def step_recorded(
        self,
        trace: Trace,
        record: StepRecord,
        state_hash: str,
        payload: Any,
        *,
        ends_run: bool = False,
    ) -> None:
        self._fence(trace.trace_id)
        kind = EnvelopeKind.RESUME if record.status is StepStatus.RESUMED else EnvelopeKind.STEP
        body = {
            "output": payload,
            "error": record.error,
            "type": record.type.value,
            "attempts": record.attempts,
            "parent": record.parent,
            "started_at": record.started_at,
            "finished_at": record.finished_at,
            "usage": None if record.usage is None else record.usage.model_dump(),
            "metrics": _metrics(trace.metrics),
        }
        if record.tool is not None:  # what was called, with what (secrets as refs)
            body["tool"] = record.tool
            body["arguments"] = self.projector.for_journal(record.arguments)
        envelope: dict[str, Any] = {
            "step_id": record.step_id,
            "status": record.status.value,
            "payload": body,
            "snapshot_hash": state_hash,
        }
        # A resume record never rides: its event id is marked delivered once it is durable.
        rides = record.type is StepType.CONDITION or ends_run
        if rides and kind is EnvelopeKind.STEP:
            # A condition's decision is derived from what is already durable (the outputs and
            # context it reads): its record rides in the next commit, and a crash before that
            # makes recovery decide it again, identically. A step the run ends (or suspends)
            # after rides with the run's end, appended next with nothing executed between: a
            # crash first leaves that step in flight, as a crash before its own commit did.
            self.ledger.append_riding(trace.trace_id, kind, **envelope)
            return
        await self.ledger.append(trace.trace_id, kind, **envelope)
        if kind is EnvelopeKind.RESUME:
            await self._delivered(trace.trace_id)

    async def run_suspended(self, trace: Trace) -> None:
        self._fence(trace.trace_id)
        self._events.pop(trace.trace_id, None)  # a claim given back: the event was not used
        await self._append_with_status(
            trace.trace_id,
            EnvelopeKind.SUSPEND,
            step_id=trace.suspended_step,
            status=TraceStatus.SUSPENDED.value,
            payload={"cursor": trace.cursor, "wake_at": trace.wake_at},
            snapshot_hash=trace.root_hash,
            index=RunStore.status_statement(
                trace.trace_id,
                TraceStatus.SUSPENDED.value,
                self.clock.now(),
                suspended_step=trace.suspended_step,
                cursor=trace.cursor,
                wake_at=trace.wake_at,
            ),
        )
        self._held.discard(trace.trace_id)

    async def run_finished(self, trace: Trace) -> None:
        self._fence(trace.trace_id)
        await self._append_with_status(
            trace.trace_id,
            EnvelopeKind.RUN_FINISHED,
            status=trace.status.value,
            payload={
                "error": trace.error,
                "final_output": self.projector.for_journal(trace.final_output),
                "metrics": _metrics(trace.metrics),
                "finished_at": trace.finished_at,
            },
            snapshot_hash=trace.root_hash,
            index=RunStore.status_statement(
                trace.trace_id, trace.status.value, self.clock.now(), error=trace.error
            ),
        )
        self._held.discard(trace.trace_id)

    @contextmanager
    def run_ends_riding(self) -> Iterator[None]:
        """Within this block, a run that this task ends (finished or suspended) records its end
        as a rider of the next append: for a caller that appends a durable record right after
        the run returns and answers only then (the service, with its access record). The
        run's end is then stored with that record or, after a crash, decided again by
        recovery. Only when the run index shares the ledger's database (the end and its index
        row in one commit); tasks started inside the block are not affected."""
        token = _RUN_ENDS_RIDE.set(asyncio.current_task())
        try:
            yield
        finally:
            _RUN_ENDS_RIDE.reset(token)

    async def _append_with_status(
        self, trace_id: str, kind: EnvelopeKind, *, index: Statement, **envelope: Any
    ) -> None:
        """An envelope and the run's new index row: one commit when they share a database;
        otherwise the envelope first (an index row may lag its envelopes, never lead them)."""
        if self._one_commit:
            task = _RUN_ENDS_RIDE.get()
            if task is not None and task is asyncio.current_task():
                self.ledger.append_riding(trace_id, kind, also=[index], **envelope)
                return
            await self.ledger.append(trace_id, kind, also=[index], **envelope)
            return
        await self.ledger.append(trace_id, kind, **envelope)
        await self.runs.write([index])

    # --- leases -----------------------------------------------------------------------------

    def _lease_terms(self) -> tuple[str | None, float | None]:
        """(owner, lease end) for a run taken now; (None, None) without leases."""
        if self.lease is None:
            return None, None
        return self.lease.owner, self.clock.now() + self.lease.seconds

    def _hold(self, trace_id: str) -> None:
        if self.lease is not None:
            self._held.add(trace_id)
            self._lost.discard(trace_id)

    def _fence(self, trace_id: str) -> None:
        if trace_id in self._lost:
            raise LeaseLostError(
                f"run '{trace_id}': this instance lost its lease on the run (another instance "
                "continues it); nothing more is recorded here"
            )

    async def renew_leases(self) -> set[str]:
        """Extend the leases of the runs executed here; return the runs whose lease was lost
        (taken over by another instance), which are fenced from now on.

        If the renewal fails (the database is unreachable) after the leases may have expired,
        every run held is fenced as lost: another instance may have taken them over."""
        if self.lease is None:
            return set()
        held, started = set(self._held), time.monotonic()
        try:
            kept = await self.runs.renew(self.lease.owner, self.clock.now() + self.lease.seconds)
        except Exception:
            if time.monotonic() - self._renewed_at >= self.lease.seconds:
                self._lose(set(self._held))
            raise
        self._renewed_at = started
        # Runs taken while the renewal ran are not in `held`: they cannot be judged by it.
        lost = (held & self._held) - kept.keys()
        self._lose(lost)
        for trace_id, reason in kept.items():
            if reason is not None and trace_id in self._held:
                self._cancel(trace_id, reason)
        return lost

    def _cancel(self, trace_id: str, reason: str) -> None:
        if self.on_cancel is None or trace_id in self._cancelling:
            return
        self._cancelling.add(trace_id)

        async def cancel() -> None:
            assert self.on_cancel is not None
            try:
                await self.on_cancel(trace_id, reason)
            except Exception:
                logger.exception("could not cancel run %s as asked", trace_id)
            finally:
                self._cancelling.discard(trace_id)

        # A task of its own: a cancel waits for the run to stop, renewals must not.
        self._tasks.add(task := asyncio.create_task(cancel(), name=f"cancel {trace_id}"))
        task.add_done_callback(self._tasks.discard)

    async def release(self, trace_id: str) -> None:
        """Give back the lease of a run taken over but not continued here."""
        if self.lease is None:
            return
        self._held.discard(trace_id)
        await self.runs.release(trace_id, self.lease.owner)

    def _lose(self, lost: set[str]) -> None:
        self._lost |= lost
        self._held -= lost
        # Records of those runs still waiting to ride are this instance's no more to store.
        self.ledger.drop_riders(lost)

    async def keep_leases(self, interval_seconds: float | None = None) -> None:
        """Renew the leases every `interval_seconds` (a third of a lease by default) until
        cancelled."""
        if self.lease is None:
            return
        interval = interval_seconds if interval_seconds is not None else self.lease.seconds / 3
        while True:
            await asyncio.sleep(interval)
            try:
                lost = await self.renew_leases()
            except Exception:
                logger.exception("could not renew the leases of %d run(s)", len(self._held))
                continue
            if lost:
                logger.warning(
                    "lost the lease of %d run(s) to another instance: %s",
                    len(lost),
                    ", ".join(sorted(lost)),
                )

    # --- reading ----------------------------------------------------------------------------

    async def claim_suspended(self, trace_id: str) -> tuple[dict[str, Any], Trace]:
        owner, until = self._lease_terms()
        # Riding when the index shares the ledger's database: the resume record (or the
        # suspension given back) is the next thing this run appends, at the ledger's level.
        claimed = await self.runs.claim(
            trace_id, self.clock.now(), owner=owner, lease_until=until, riding=self._one_commit
        )
        if not claimed:
            raise ResumeError(await self._why_not_suspended(trace_id))
        self._hold(trace_id)
        row = await self.runs.get(trace_id)
        assert row is not None
        trace = await self.rebuild(row)
        trace.status = TraceStatus.SUSPENDED  # the VM moves it on with the FSM
        return await self.runs.program(row.program_hash), trace

    async def due_timers(self, now: float) -> list[str]:
        owner, until = self._lease_terms()
        return await self.runs.due(now, owner=owner, lease_until=until)

    async def running_runs(self) -> list[tuple[dict[str, Any], Trace]]:
        """Runs whose index says RUNNING (with a lease: only those whose lease expired, now
        leased here), after repairing what a crash between an envelope and its index update
        leaves behind (the envelopes are the truth)."""
        found = []
        for row in await self._orphans():
            envelopes = await self.ledger.query(execution_id=row.trace_id)
            finished = _last(envelopes, EnvelopeKind.RUN_FINISHED)
            if finished is not None:  # it ended; only the index missed it
                await self.runs.write(
                    [
                        RunStore.status_statement(
                            row.trace_id,
                            finished.status or TraceStatus.FAILED.value,
                            self.clock.now(),
                            error=(finished.payload or {}).get("error"),
                        )
                    ]
                )
                self._held.discard(row.trace_id)
                continue
            if _last(envelopes, EnvelopeKind.RUN_STARTED) is None:
                # The index row was written, the process died before the start envelope.
                await self._append_started(row)
            trace = self._trace_from(row, envelopes, project=False)
            program = await self.runs.program(row.program_hash)
            if _ends_suspended(trace):
                await self._repair_suspension(row, trace, envelopes, program)
                self._held.discard(row.trace_id)
                continue
            found.append((program, trace))
        return found

    async def _orphans(self) -> list[RunRow]:
        """The RUNNING runs no live instance executes. Without leases: every RUNNING run (the
        caller made sure no other process runs them); with leases: those whose lease expired,
        taken over by this journal."""
        if self.lease is None:
            return await self.runs.with_status(TraceStatus.RUNNING.value)
        now = self.clock.now()
        taken = await self.runs.take_over(self.lease.owner, now, now + self.lease.seconds)
        rows = []
        for trace_id in taken:
            self._hold(trace_id)
            row = await self.runs.get(trace_id)
            if row is not None:
                rows.append(row)
        return rows

    async def _append_started(self, row: RunRow, also: Sequence[Statement] = ()) -> None:
        """The run's start envelope (also written by recovery when a crash lost it)."""
        await self.ledger.append(*self._started_envelope(row), also=also)

    def _started_envelope(
        self, row: RunRow
    ) -> tuple[str, EnvelopeKind, None, str, dict[str, Any], str]:
        """(execution id, kind, step id, status, payload, snapshot hash) of a run's start."""
        payload = {
            "program": row.program_name,
            "program_hash": row.program_hash,
            "context": self.projector.for_journal(row.context),
            "started_at": row.started_at,
        }
        started = TraceStatus.RUNNING.value
        return row.trace_id, EnvelopeKind.RUN_STARTED, None, started, payload, row.initial_hash

    async def _repair_suspension(
        self,
        row: RunRow,
        trace: Trace,
        envelopes: list[GovernanceEnvelope],
        program_data: dict[str, Any],
    ) -> None:
        """The run suspended, but the index still says RUNNING: take the cursor and timer from
        the suspend envelope, or recompute them (and record the missing envelope)."""
        record = trace.steps[-1]
        suspend = _last(envelopes, EnvelopeKind.SUSPEND)
        if suspend is not None and suspend.seq > _last_step_seq(envelopes):
            cursor, wake_at = suspend.payload["cursor"], suspend.payload["wake_at"]
        else:
            node = Program.from_dict(program_data).compiled.steps[record.step_id]
            cursor = successor(node, record.output)
            if node.type is StepType.WAIT:
                wake_at = record.output["wake_at"]
            else:
                wake_at = deadline(node, record.finished_at)
            await self.ledger.append(
                row.trace_id,
                EnvelopeKind.SUSPEND,
                step_id=record.step_id,
                status=TraceStatus.SUSPENDED.value,
                payload={"cursor": cursor, "wake_at": wake_at},
                snapshot_hash=trace.root_hash,
            )
        await self.runs.write(
            [
                RunStore.status_statement(
                    row.trace_id,
                    TraceStatus.SUSPENDED.value,
                    self.clock.now(),
                    suspended_step=record.step_id,
                    cursor=cursor,
                    wake_at=wake_at,
                )
            ]
        )

    async def load_trace(self, trace_id: str) -> Trace | None:
        row = await self.runs.get(trace_id)
        return None if row is None else await self.rebuild(row)

    async def claim_run_key(
        self, key: str, fingerprint: str, trace_id: str, now: float, retention: float
    ) -> tuple[str, str] | None:
        bound = await self.runs.claim_key(key, fingerprint, trace_id, now, retention)
        if bound is None:
            self._keyed.add(trace_id)  # its start is committed at once (_start_may_ride)
        return bound

    async def event_seen(self, trace_id: str, event_id: str) -> bool:
        return await self.runs.event_seen(trace_id, event_id)

    async def remember_event(self, trace_id: str, event_id: str) -> None:
        """Recorded once the resume it caused is (its RESUMED envelope committed): a crash in
        between leaves the run to be resumed by a redelivery of the event, never an event
        marked delivered whose resume was lost."""
        self._events[trace_id] = event_id

    async def _delivered(self, trace_id: str) -> None:
        event_id = self._events.pop(trace_id, None)
        if event_id is not None:
            await self.runs.remember_event(trace_id, event_id, self.clock.now())

    async def prune(self, older_than_seconds: float) -> int:
        """Remove finished runs' operational rows older than this; the ledger is untouched."""
        return await self.runs.prune(self.clock.now() - older_than_seconds)

    async def get_trace(self, trace_id: str) -> Trace:
        """The run as recorded (outputs as projected for the trace target)."""
        row = await self.runs.get(trace_id)
        if row is None:
            raise KeyError(f"no run '{trace_id}' in this ledger")
        return await self.rebuild(row, project=True)

    async def rebuild(self, row: RunRow, *, project: bool = False) -> Trace:
        envelopes = await self.ledger.query(execution_id=row.trace_id)
        return self._trace_from(row, envelopes, project=project)

    def _trace_from(
        self, row: RunRow, envelopes: list[GovernanceEnvelope], *, project: bool
    ) -> Trace:
        """Rebuild a trace from the run's envelopes. With `project`, values are shown as a
        reader may see them (refs with commitments, erased refs as tombstones); otherwise refs
        are restored so that the VM can continue the run."""
        records, hashes, metrics, final = [], [], Metrics(), None
        for envelope in envelopes:
            if envelope.kind in _STEP_KINDS:
                records.append(self._record(envelope, project))
                hashes.append(envelope.canonical_snapshot_hash or "")
                metrics = Metrics(**envelope.payload["metrics"])
            elif envelope.kind is EnvelopeKind.RUN_FINISHED:
                final = envelope.payload
        trace = Trace(
            trace_id=row.trace_id,
            program_name=row.program_name,
            program_hash=row.program_hash,
            status=TraceStatus(row.status),
            steps=records,
            started_at=row.started_at,
            metrics=metrics,
            context=self.projector.for_trace(row.context) if project else row.context,
            initial_hash=row.initial_hash,
            state_hashes=hashes,
            cursor=row.cursor,
            suspended_step=row.suspended_step,
            wake_at=row.wake_at,
            error=row.error,
        )
        if final is not None:
            output = Projector.restore_refs(final.get("final_output"))
            trace.final_output = self.projector.for_trace(output) if project else output
            trace.finished_at = final.get("finished_at")
        return trace

    def _record(self, envelope: GovernanceEnvelope, project: bool) -> StepRecord:
        body = envelope.payload
        output = Projector.restore_refs(body["output"])
        if project:
            output = self.projector.for_trace(output)
        assert envelope.step_id is not None and envelope.status is not None
        return StepRecord(
            step_id=envelope.step_id,
            type=StepType(body["type"]),
            status=StepStatus(envelope.status),
            output=output,
            error=body["error"],
            attempts=body["attempts"],
            started_at=body["started_at"],
            finished_at=body["finished_at"],
            duration_ms=(body["finished_at"] - body["started_at"]) * 1000.0,
            usage=None if body["usage"] is None else Usage(**body["usage"]),
            parent=body["parent"],
            tool=body.get("tool"),
            arguments=self._arguments(body, project),
        )

    def _arguments(self, body: dict[str, Any], project: bool) -> Any:
        if "arguments" not in body:  # not a tool step, or recorded before calls were
            return None
        arguments = Projector.restore_refs(body["arguments"])
        return self.projector.for_trace(arguments) if project else arguments

    async def _why_not_suspended(self, trace_id: str) -> str:
        row = await self.runs.get(trace_id)
        if row is None:
            return f"unknown run '{trace_id}': nothing to resume"
        if row.status == TraceStatus.RUNNING.value:
            return f"run '{trace_id}' is not suspended: already resumed (it is running)"
        return f"run '{trace_id}' is not suspended: it ended {row.status} (already resumed?)"


def _metrics(metrics: Metrics) -> dict[str, Any]:
    return {name: getattr(metrics, name) for name in Metrics.__dataclass_fields__}


def _last(envelopes: list[GovernanceEnvelope], kind: EnvelopeKind) -> GovernanceEnvelope | None:
    return next((e for e in reversed(envelopes) if e.kind is kind), None)


def _last_step_seq(envelopes: list[GovernanceEnvelope]) -> int:
    return max((e.seq for e in envelopes if e.kind in _STEP_KINDS), default=-1)


def _ends_suspended(trace: Trace) -> bool:
    top = [r for r in trace.steps if r.parent is None]
    return bool(top) and top[-1].status is StepStatus.SUSPENDED
