"""LedgerflowService: the gateway's operations, independent of MCP or any other protocol.

Every operation takes the calling `Principal`, checks the scope `OPERATION_SCOPES` gives it, and
appends one `access` envelope (principal, operation, outcome ok/error/denied, duration) whatever
happens; never arguments, results or secrets. Its execution id is the run it concerned, once
that run is known to exist, else GATEWAY_EXECUTION. A pass-through call of a downstream tool
(`call_tool`) is the exception: its one envelope is the call itself, `tool_call` with the
projected arguments and output, or `denied` with the reason.

Domain problems raise `ServiceError` subclasses whose message tells the caller what to do next;
anything else is a bug. The active `PolicySnapshot` (the ledger's) governs what runs: tools and
models outside its lists, and budgets above its caps, are refused with a `denied` envelope; a
program without a budget the policy caps gets the cap. Saving applies the same rules, so a saved
version is the program as it runs (and a run of it records the version's hash).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime as dt
import difflib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Generic, NoReturn, TypeVar

from gateway.application.passthrough import (
    Answer,
    ExposedTool,
    ExposedTools,
    FailedAnswer,
    ProgressSink,
    RateLimiter,
    retry_text,
)
from gateway.application.policy_rules import budgeted, refused_calls
from gateway.application.principal import OPERATION_SCOPES, Principal, Scope
from gateway.application.program_cache import ProgramCache
from gateway.application.program_registry import ProgramRegistry, SavedProgram
from gateway.application.progress import OnProgress, reporting
from gateway.application.step_observer import OnStep, StepObserver
from gateway.application.witnesses import Submission, WitnessStore, submit
from gateway.application.workspace import Workspace
from governance import EnvelopeKind, EnvelopeQuery, GovernanceEnvelope, LedgerError, VerifyReport
from governance.runs import RunStore
from governance.storage.ledger_port import CheckpointRecord
from governance.tiles import parse_tile_path
from kernel import (
    CanonicalizationError,
    DuplicateEventError,
    ExecutionVM,
    ExpressionError,
    IdempotencyError,
    LedgerflowError,
    LLMAdapter,
    Program,
    ProgramError,
    ProgramValidator,
    ResumeError,
    Trace,
    TraceStatus,
    VMError,
)
from kernel.tools import Tool
from vault import ErasureReceipt, IntakeError, VaultError, seal_context

logger = logging.getLogger("ledgerflow.gateway")

GATEWAY_EXECUTION = "gateway"  # execution id of envelopes that concern no single run
MAX_PAGE = 500
CANCEL_POLL_SECONDS = 0.1
# A program larger than this is refused before it is parsed: a model that generates a runaway
# program gets a clear error instead of tying up the server validating it.
MAX_PROGRAM_STEPS = 10_000
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
T = TypeVar("T")


class ServiceError(LedgerflowError):
    """A request the service refuses; the message says why and what to do instead."""


class NotFound(ServiceError):
    """The run, program, version or envelope named does not exist."""


class Denied(ServiceError):
    """The principal lacks the scope, or the policy refuses the program."""


class Invalid(ServiceError):
    """The request itself is wrong: a malformed program, context, filter or cursor."""


class Conflict(ServiceError):
    """The request is well formed but the state forbids it (run not suspended, key reused...)."""


class Unavailable(ServiceError):
    """What was asked could not be done now: a downstream server down, timed out, its circuit
    open. Retrying later may work."""


def _unknown_exposed(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return f"no exposed tool '{name}'{hint}"


def _translated(exc: LedgerflowError) -> ServiceError | None:
    """The service error a kernel or vault error means, None for errors that are bugs."""
    if isinstance(exc, DuplicateEventError):
        return Conflict(f"{exc}; nothing was done (the first delivery counts)")
    if isinstance(exc, ResumeError | IdempotencyError | VMError):
        return Conflict(str(exc))
    if isinstance(exc, ProgramError | ExpressionError | IntakeError | CanonicalizationError):
        return Invalid(str(exc))
    return None


@dataclass(frozen=True, slots=True)
class RunSummary:
    trace_id: str
    program_name: str
    program_hash: str
    status: TraceStatus
    started_at: float
    updated_at: float
    error: str | None


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of a listing; pass `next_cursor` back to get the next (None: this was the last)."""

    items: list[T]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class ProgramCheck:
    """What validate_program found: load-time, runtime and policy errors, and warnings."""

    program_name: str | None
    program_hash: str | None
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


@dataclass(frozen=True, slots=True)
class ToolCallRecord:
    """A pass-through call done: its answer, and the envelope that records it."""

    call_id: str  # the envelope's execution id
    seq: int
    answer: Answer


@dataclass(slots=True)
class _Call:
    execution_id: str = GATEWAY_EXECUTION
    # A background call that found nothing to do and succeeded records no access envelope:
    # one per timer tick would bury the log. A caller's own request is always recorded.
    idle: bool = False
    # The operation recorded itself (a pass-through call's tool_call or denied envelope).
    recorded: bool = False


class LedgerflowService:
    """The operations over one open Workspace. Create with `await LedgerflowService.open(...)`."""

    def __init__(
        self,
        workspace: Workspace,
        registry: ProgramRegistry,
        tools: Mapping[str, Tool] | None = None,
        llm: LLMAdapter | None = None,
    ) -> None:
        self.workspace = workspace
        self.registry = registry
        self._journal = StepObserver(workspace.journal)
        # One VM for every call: it knows the runs in flight here, so cancel reaches them.
        self.vm = ExecutionVM(tools=tools, llm=llm, journal=self._journal, secrets=workspace.vault)
        # A cancel asked through another instance of a run executing here (leases only).
        workspace.journal.on_cancel = self.vm.cancel
        model = getattr(llm, "model", None)
        self._llm_model = model if isinstance(model, str) else None
        self._refused_timers: set[str] = set()
        self._programs = ProgramCache()
        # Downstream tools offered to MCP clients (pass-through), and their per-token limits.
        self.exposed = ExposedTools()
        self._rates = RateLimiter()
        self._witnessed: int | None = None  # the last checkpoint index sent to the witnesses

    @classmethod
    async def open(
        cls,
        workspace: Workspace,
        tools: Mapping[str, Tool] | None = None,
        llm: LLMAdapter | None = None,
    ) -> LedgerflowService:
        """A service over `workspace` (the caller keeps closing it) with its program registry."""
        registry = await workspace.operational(ProgramRegistry).open()
        return cls(workspace, registry, tools, llm)

    async def close(self) -> None:
        await self.registry.close()

    @property
    def tool_names(self) -> list[str]:
        return sorted(self.vm.tools)

    @property
    def verifier_keys(self) -> list[str]:
        return self.workspace.ledger.verifier_keys

    async def recover(
        self, principal: Principal, *, wait_seconds: float = 0, background: bool = False
    ) -> list[Trace]:
        """Continue the runs a dead process left RUNNING, each once the policy admits it and
        this process has its tools. `background` (a server's own maintenance): a call that
        recovers nothing records nothing.

        A run another live process is executing is never taken over: on SQLite nothing is
        recovered while another process writes to the ledger (the workspace's lock; this
        waits up to `wait_seconds` for it, then raises LedgerBusyError) and one refused run
        stops the whole recovery; on PostgreSQL only runs whose instance's lease expired are
        taken over, and a refused one is given back."""
        async with self._access(principal, "recover_runs") as call:

            async def admit(trace_id: str) -> None:
                program = await self._program_of_run(trace_id)
                await self._admit(principal, "recover_runs", trace_id, program)

            recovered = await self.workspace.recover(
                self.vm, wait_seconds=wait_seconds, admit=admit
            )
            call.idle = background and not recovered
            return [self.workspace.view(trace) for trace in recovered]

    async def fire_due_timers(
        self, principal: Principal, *, background: bool = False
    ) -> list[Trace]:
        """Wake every suspended run whose timer is due (wait steps, suspension deadlines).
        `background` (the timer loop): a tick that fires nothing records nothing, and a run
        the policy refuses gets one `denied` envelope, not one per tick."""
        async with self._access(principal, "fire_timers") as call:
            fired = await self._fire_due(principal, deny_once=background)
            call.idle = background and not fired
            return fired

    async def run_timers(self, principal: Principal, interval_seconds: float = 1.0) -> None:
        """Fire due timers every `interval_seconds` until cancelled."""
        while True:
            try:
                await self.fire_due_timers(principal, background=True)
            except Exception:
                logger.exception("timer loop: firing due timers failed; retrying")
            await self.vm.clock.sleep(interval_seconds)

    async def _fire_due(self, principal: Principal, *, deny_once: bool) -> list[Trace]:
        """Every due run admitted first (as in resume: before any claim), then fired. Strict
        (`deny_once` False): one refusal fires nothing."""
        admitted: list[str] = []
        for trace_id in await self.workspace.journal.due_timers(self.vm.clock.now()):
            if trace_id in self._refused_timers:
                continue
            try:
                program = await self._program_of_run(trace_id)
                await self._admit(principal, "fire_timers", trace_id, program)
            except Denied:
                if not deny_once:
                    raise
                self._refused_timers.add(trace_id)
                logger.warning("run %s: its timer is due but the policy refuses it", trace_id)
                continue
            admitted.append(trace_id)
        fired: list[Trace] = []
        for trace_id in admitted:
            trace = await self.vm.fire_timer(trace_id)
            if trace is not None:
                fired.append(self.workspace.view(trace))
        return fired

    # --- runs ------------------------------------------------------------------------------

    async def run_program(
        self,
        principal: Principal,
        program: Program | Mapping[str, Any] | str,
        context: Mapping[str, Any] | None = None,
        *,
        idempotency_key: str | None = None,
        save_as: str | None = None,
        on_step: OnStep | None = None,
        on_progress: OnProgress | None = None,
    ) -> Trace:
        """Run a program (given, or saved under that name) until it ends or suspends.
        `on_step` hears of each recorded step, `on_progress` of the progress tools report.

        Context values written `{"$secret": V, "subject": S}` are sealed into the vault first.
        The idempotency key is the principal's own: another principal's equal key is another key.
        """
        async with self._access(principal, "run_program") as call:
            trace_id = str(uuid.uuid4())
            governed = await self._govern(principal, "run_program", trace_id, program)
            self.vm.validate(governed)  # before sealing: a refused program stores no secret,
            self.vm.check_context(governed, context)  # nor does a refused context
            if save_as is not None:
                await self._save(save_as, governed)
            sealed = None if context is None else seal_context(context, self.workspace.vault)
            key = None if idempotency_key is None else f"{principal.name}:{idempotency_key}"
            # The run's end rides in the commit of this call's access envelope, which _access
            # appends before the caller gets the answer: one fsync less per call.
            with (
                self._journal.watch(trace_id, on_step),
                reporting(on_progress),
                self.workspace.journal.run_ends_riding(),
            ):
                trace = await self.vm.run(governed, sealed, trace_id=trace_id, idempotency_key=key)
            call.execution_id = trace.trace_id
            return self.workspace.view(trace)

    async def resume_run(
        self,
        principal: Principal,
        trace_id: str,
        event: Any = None,
        *,
        event_id: str | None = None,
        on_step: OnStep | None = None,
        on_progress: OnProgress | None = None,
    ) -> Trace:
        """Deliver `event` to a suspended run and continue it. With `event_id`, a redelivered
        event is refused as a Conflict that changed nothing."""
        async with self._access(principal, "resume_run") as call:
            program = await self._program_of_run(trace_id)
            call.execution_id = trace_id
            await self._admit(principal, "resume_run", trace_id, program)
            with (
                self._journal.watch(trace_id, on_step),
                reporting(on_progress),
                self.workspace.journal.run_ends_riding(),
            ):
                trace = await self.vm.resume(trace_id, event, event_id=event_id)
            return self.workspace.view(trace)

    async def cancel_run(
        self, principal: Principal, trace_id: str, reason: str = "cancelled"
    ) -> Trace:
        """Cancel a suspended run, or a running one: here at once; executing on another
        instance (leases), by asking that instance, which stops it at its next lease renewal;
        this waits up to a lease for it."""
        async with self._access(principal, "cancel_run") as call:
            await self._program_of_run(trace_id)
            call.execution_id = trace_id
            try:
                await self.vm.cancel(trace_id, reason)
            except VMError:
                if not await self._cancel_elsewhere(trace_id, reason):
                    raise
            return await self._trace(trace_id)

    async def _cancel_elsewhere(self, trace_id: str, reason: str) -> bool:
        """False if the run is not running on another instance (the VM's error stands)."""
        journal = self.workspace.journal
        lease = journal.lease
        if lease is None or not await journal.runs.request_cancel(trace_id, reason):
            return False
        deadline = time.monotonic() + lease.seconds
        while time.monotonic() < deadline:
            row = await journal.runs.get(trace_id)
            if row is None or row.status != TraceStatus.RUNNING.value:
                return True
            await asyncio.sleep(CANCEL_POLL_SECONDS)
        raise Conflict(
            f"run '{trace_id}' runs on another instance: the cancel was passed on, and that "
            "instance stops the run at its next lease renewal; get_trace shows when it has"
        )

    async def get_trace(self, principal: Principal, trace_id: str) -> Trace:
        """The run as recorded; secrets as refs with commitments, erased ones as tombstones."""
        async with self._access(principal, "get_trace") as call:
            trace = await self._trace(trace_id)
            call.execution_id = trace_id
            return trace

    async def list_traces(
        self,
        principal: Principal,
        *,
        status: TraceStatus | None = None,
        program: str | None = None,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page[RunSummary]:
        """Runs, newest first. `program` matches a program name or hash; `since` (inclusive)
        and `until` (exclusive) bound the start time."""
        async with self._access(principal, "list_traces"):
            return await _page_runs(
                self.workspace.journal.runs,
                status=status,
                program=program,
                since=_seconds(since, "since"),
                until=_seconds(until, "until"),
                limit=_limit(limit),
                cursor=cursor,
            )

    # --- programs --------------------------------------------------------------------------

    async def save_program(
        self, principal: Principal, program: Program | Mapping[str, Any], name: str | None = None
    ) -> SavedProgram:
        """Save under `name` (default: the program's own name) as the next version."""
        async with self._access(principal, "save_program"):
            if isinstance(program, str):
                raise Invalid("save_program takes the program itself, not a name")
            governed = await self._govern(principal, "save_program", GATEWAY_EXECUTION, program)
            return await self._save(name or governed.name, governed)

    async def get_program(
        self, principal: Principal, name: str, version: int | None = None
    ) -> SavedProgram:
        async with self._access(principal, "get_program"):
            saved = await self.registry.get(name, version)
            if saved is None:
                which = "" if version is None else f" version {version}"
                raise NotFound(f"no saved program '{name}'{which}; list_programs shows them")
            return saved

    async def list_programs(self, principal: Principal) -> list[SavedProgram]:
        async with self._access(principal, "list_programs"):
            return await self.registry.list()

    async def delete_program(self, principal: Principal, name: str) -> SavedProgram:
        """Retire `name`: no new runs of it; its versions, runs and envelopes stay."""
        async with self._access(principal, "delete_program"):
            saved = await self.registry.retire(name)
            if saved is None:
                raise NotFound(f"no saved program '{name}'; list_programs shows them")
            return saved

    async def validate_program(
        self, principal: Principal, program: Program | Mapping[str, Any] | str
    ) -> ProgramCheck:
        """Every problem that would stop the program running here, without running it."""
        async with self._access(principal, "validate_program"):
            try:
                loaded = await self._load(program)
            except ProgramError as exc:
                return ProgramCheck(None, None, errors=list(exc.problems))
            validator = ProgramValidator(tools=self.vm.tools, llm=self.vm.llm is not None)
            report = validator.validate(loaded)
            policy = self.workspace.ledger.policy
            refused = refused_calls(loaded, policy, self._llm_model)
            refused += budgeted(loaded, policy)[1]
            return ProgramCheck(
                loaded.name,
                loaded.hash,
                errors=[str(f) for f in report.errors] + [f"policy: {r}" for r in refused],
                warnings=[str(f) for f in report.warnings],
            )

    # --- audit -----------------------------------------------------------------------------

    async def query_envelopes(
        self,
        principal: Principal,
        *,
        execution_id: str | None = None,
        kind: EnvelopeKind | None = None,
        policy_hash: str | None = None,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> Page[GovernanceEnvelope]:
        """Envelopes in seq order; `since` inclusive, `until` exclusive (recorded_at)."""
        async with self._access(principal, "query_envelopes"):
            limit = _limit(limit)
            query = EnvelopeQuery(
                execution_id=execution_id,
                kind=kind,
                policy_hash=policy_hash,
                since=_micros(since, "since"),
                until=_micros(until, "until"),
                start_seq=_seq_cursor(cursor),
                limit=limit + 1,
            )
            found = await self.workspace.ledger.store.query(query)
            more = len(found) > limit
            return Page(found[:limit], str(found[limit].seq) if more else None)

    async def get_proof(
        self, principal: Principal, seq: int, since_size: int | None = None
    ) -> dict[str, Any]:
        """The proof bundle of envelope `seq` (check it with `ledgerflow verify-proof`); with
        `since_size`, also a consistency proof from a checkpoint of that size the caller holds
        (`verify-proof --checkpoint NOTE`)."""
        async with self._access(principal, "get_proof"):
            if since_size is not None and since_size < 1:
                raise Invalid(f"since_size {since_size}: a checkpoint holds 1 or more envelopes")
            try:
                return await self.workspace.ledger.proof_bundle(seq, since_size)
            except LedgerError as exc:
                raise NotFound(f"{exc}; query_envelopes lists the seqs") from None

    async def list_checkpoints(self, principal: Principal) -> list[CheckpointRecord]:
        """Every signed checkpoint, oldest first."""
        async with self._access(principal, "list_checkpoints"):
            return await self.workspace.ledger.store.list_checkpoints()

    async def get_consistency_proof(self, principal: Principal, old_size: int) -> dict[str, Any]:
        """The latest signed checkpoint and a consistency proof from a checkpoint of `old_size`
        envelopes the caller holds (check it with `ledgerflow verify-consistency`)."""
        async with self._access(principal, "get_consistency_proof"):
            try:
                return await self.workspace.ledger.consistency_bundle(old_size)
            except LedgerError as exc:
                raise Invalid(str(exc)) from None

    async def verify_ledger(
        self, principal: Principal, verifier_keys: Iterable[str] | None = None
    ) -> VerifyReport:
        """Audit the whole ledger, with the keys given, else with this ledger's signing keys."""
        async with self._access(principal, "verify_ledger"):
            keys = list(verifier_keys) if verifier_keys is not None else None
            return await self.workspace.ledger.verify(keys or None)

    async def erase_subject(
        self, principal: Principal, subject: str, reason: str, request_id: str | None = None
    ) -> ErasureReceipt:
        """Crypto-shred the subject's secrets; traces show them as tombstones from now on."""
        async with self._access(principal, "erase_subject") as call:
            try:
                receipt = await self.workspace.erase(subject, reason, request_id)
            except VaultError as exc:
                raise Invalid(str(exc)) from None
            call.execution_id = receipt.request_id
            return receipt

    def exposed_for(self, principal: Principal) -> list[ExposedTool]:
        """The exposed downstream tools `principal` may call as things stand: its scope, its
        token's tool allow-list and the policy (rate limits aside). Listing them is the
        protocol's discovery, like the list of ledgerflow's own tools: no envelope."""
        if not principal.allows(Scope.TOOLS):
            return []
        policy = self.workspace.ledger.policy
        return [
            tool
            for tool in self.exposed.all()
            if principal.may_call(tool.target) and policy.allows_tool(tool.target)
        ]

    async def call_tool(
        self,
        principal: Principal,
        name: str,
        arguments: Mapping[str, Any],
        progress: ProgressSink | None = None,
    ) -> ToolCallRecord:
        """Call an exposed downstream tool (SERVER__TOOL) for `principal`: its token's tool
        allow-list, the policy's tool lists (by SERVER.TOOL, as for program steps) and the
        server's rate limit per token must admit it. One envelope records the call: `tool_call`
        (arguments and answer projected as a step's), or `denied` with the reason."""
        async with self._access(principal, "call_tool") as call:
            tool = self.exposed.get(name)
            if tool is None:
                raise NotFound(_unknown_exposed(name, self.exposed.names()))
            call.recorded = True
            call.execution_id = f"call-{uuid.uuid4().hex}"
            refused = self._refused_call(principal, tool)
            if refused is not None:
                await self._deny_call(principal, call.execution_id, tool, refused)
            started = time.perf_counter()
            try:
                answer = await tool.call(dict(arguments), progress)
            except FailedAnswer as exc:
                answer = exc.answer
            except LedgerflowError as exc:
                failed = Answer(None, None, is_error=True, error=str(exc))
                await self._record_call(
                    principal, call.execution_id, tool, arguments, failed, started
                )
                raise Unavailable(str(exc)) from None
            envelope = await self._record_call(
                principal, call.execution_id, tool, arguments, answer, started
            )
            return ToolCallRecord(call.execution_id, envelope.seq, answer)

    async def witness_checkpoint(
        self, principal: Principal, *, background: bool = False
    ) -> list[Submission]:
        """Submit the latest checkpoint to every configured witness and keep their
        cosignatures (gateway.application.witnesses). `background` (a server's own
        maintenance): only when there is a new checkpoint, and recorded in the witness table
        and the log rather than as an access envelope."""
        async with self._access(principal, "witness_checkpoint") as call:
            ledger = self.workspace.ledger
            # In the background, once per new checkpoint (the ledger cuts them as it grows):
            # a witness that refused is not asked again until there is something new to show.
            checkpoint = ledger.last_checkpoint
            if background and (checkpoint is None or checkpoint.index == self._witnessed):
                call.idle = True
                return []
            async with self.workspace.operational(WitnessStore) as store:
                results = [await submit(store, w, ledger) for w in await store.all()]
            if checkpoint is not None:
                self._witnessed = checkpoint.index
            # A background submission records no envelope: it would make the next checkpoint
            # due, and that one another submission. Its outcome is kept in the witness table.
            call.idle = background
            return results

    # --- the transparency log --------------------------------------------------------------
    # Public by design: signed notes and hashes, no payload, no secret. Read without a
    # principal or an access envelope, like a health probe: one envelope per fetch would grow
    # the very log being fetched, tile by tile.

    async def tlog_checkpoint(self) -> bytes | None:
        """The latest signed checkpoint note (C2SP tlog-checkpoint), None for an empty log."""
        return await self.workspace.ledger.tlog_checkpoint()

    async def tlog_tile(self, path: str) -> bytes | None:
        """The tile at `path` under `tile/` (C2SP tlog-tiles), None if there is none."""
        parsed = parse_tile_path(path)
        if parsed is None:
            return None
        return await self.workspace.ledger.tlog_tile(*parsed)

    async def prune_runs(self, principal: Principal, older_than_seconds: float) -> int:
        """Remove the operational rows (run index, event ids, idempotency keys) of runs that
        finished longer ago than `older_than_seconds`; envelopes are never touched."""
        async with self._access(principal, "prune_runs"):
            return await self.workspace.journal.prune(older_than_seconds)

    # --- helpers ---------------------------------------------------------------------------

    @asynccontextmanager
    async def _access(self, principal: Principal, operation: str) -> AsyncIterator[_Call]:
        """Check the scope, translate domain errors, and record the access however it ends."""
        call, started = _Call(), time.perf_counter()
        try:
            scope = OPERATION_SCOPES[operation]
            if not principal.allows(scope):
                held = ", ".join(sorted(s.value for s in principal.scopes)) or "none"
                raise Denied(
                    f"'{principal.name}' may not call {operation}: it needs the '{scope.value}' "
                    f"scope (scopes held: {held})"
                )
            try:
                yield call
            except LedgerflowError as exc:
                translated = None if isinstance(exc, ServiceError) else _translated(exc)
                if translated is None:
                    raise
                raise translated from None
        except BaseException as exc:
            outcome = "denied" if isinstance(exc, Denied) else "error"
            try:
                if not call.recorded:
                    await self._record_access(principal, operation, call, outcome, started)
            except Exception:  # the caller's error matters more than the audit's
                logger.exception("could not record the access envelope of %s", operation)
            raise
        if not call.idle and not call.recorded:
            await self._record_access(principal, operation, call, "ok", started)

    async def _record_access(
        self, principal: Principal, operation: str, call: _Call, outcome: str, started: float
    ) -> None:
        await self.workspace.ledger.append(
            call.execution_id,
            EnvelopeKind.ACCESS,
            status=outcome,
            payload={
                "principal": principal.name,
                "tool": operation,
                "outcome": outcome,
                "duration_ms": round((time.perf_counter() - started) * 1000, 3),
            },
        )

    async def _load(self, program: Program | Mapping[str, Any] | str) -> Program:
        if isinstance(program, Program):
            return program
        if isinstance(program, str):
            saved = await self.registry.get(program)
            if saved is None:
                raise NotFound(
                    f"no saved program named '{program}'; list_programs shows the saved ones, "
                    "or pass the program itself"
                )
            if saved.retired:
                raise Conflict(f"program '{program}' was deleted: save it again to run it")
            return self._programs.saved(saved.name, saved.version, saved.hash, saved.program)
        if not isinstance(program, Mapping):  # clients send JSON: anything may arrive
            kind = type(program).__name__
            raise Invalid(f"a program is a JSON object or a saved program's name, not {kind}")
        steps = program.get("steps")
        if isinstance(steps, list):
            count = len(steps) + sum(
                len(s.get("parallel_steps") or ()) for s in steps if isinstance(s, Mapping)
            )
            if count > MAX_PROGRAM_STEPS:
                raise Invalid(
                    f"the program has {count} steps; this server accepts at most "
                    f"{MAX_PROGRAM_STEPS}: split it, or loop with next_step under max_steps"
                )
        body = dict(program)
        return self._programs.inline(body, lambda: Program.from_dict(body))

    async def _govern(
        self,
        principal: Principal,
        operation: str,
        execution_id: str,
        program: Program | Mapping[str, Any] | str,
    ) -> Program:
        """The program as the policy lets it run (budget caps filled in), or a denial."""
        loaded = await self._load(program)
        ledger = self.workspace.ledger
        policy = ledger.policy

        def govern() -> tuple[Program, list[str]]:
            governed, over_budget = budgeted(loaded, policy)
            return governed, refused_calls(loaded, policy, self._llm_model) + over_budget

        governed, refused = self._programs.governed(loaded, ledger.policy_hash, govern)
        if refused:
            await self._deny(principal, operation, execution_id, loaded, refused)
        return governed

    async def _deny(
        self,
        principal: Principal,
        operation: str,
        execution_id: str,
        program: Program,
        reasons: list[str],
    ) -> NoReturn:
        policy = self.workspace.ledger.policy
        reason = "; ".join(reasons)
        await self.workspace.ledger.append(
            execution_id,
            EnvelopeKind.DENIED,
            status="denied",
            payload={
                "principal": principal.name,
                "tool": operation,
                "program": program.name,
                "program_hash": program.hash,
                "reason": reason,
            },
        )
        named = f" '{policy.name}'" if policy.name else ""
        raise Denied(f"refused by the policy{named}: {reason}")

    def _refused_call(self, principal: Principal, tool: ExposedTool) -> str | None:
        """Why a pass-through call may not go ahead now, or None. The rate limit is counted
        last, so a call refused for another reason uses none of it."""
        if not principal.may_call(tool.target):
            allowed = ", ".join(principal.tools or ())
            return f"'{principal.name}' may not call '{tool.target}' (its tools: {allowed})"
        policy = self.workspace.ledger.policy
        if not policy.allows_tool(tool.target):
            named = f" '{policy.name}'" if policy.name else ""
            return f"the policy{named} does not allow tool '{tool.target}'"
        limit = tool.rate_limit
        if limit is not None:
            wait = self._rates.admit((principal.name, tool.server), limit, time.monotonic())
            if wait is not None:
                return (
                    f"rate limit {limit.text} of server '{tool.server}' reached for "
                    f"'{principal.name}'; retry in {retry_text(wait)}"
                )
        return None

    async def _deny_call(
        self, principal: Principal, call_id: str, tool: ExposedTool, reason: str
    ) -> NoReturn:
        await self.workspace.ledger.append(
            call_id,
            EnvelopeKind.DENIED,
            step_id=tool.name,
            status="denied",
            payload={
                "principal": principal.name,
                "tool": "call_tool",
                "server": tool.server,
                "target": tool.target,
                "reason": reason,
            },
        )
        raise Denied(f"refused: {reason}")

    async def _record_call(
        self,
        principal: Principal,
        call_id: str,
        tool: ExposedTool,
        arguments: Mapping[str, Any],
        answer: Answer,
        started: float,
    ) -> GovernanceEnvelope:
        projector = self.workspace.journal.projector
        outcome = "error" if answer.is_error else "ok"
        return await self.workspace.ledger.append(
            call_id,
            EnvelopeKind.TOOL_CALL,
            step_id=tool.name,
            status=outcome,
            payload={
                "principal": principal.name,
                "server": tool.server,
                "tool": tool.target,
                "arguments": projector.for_journal(dict(arguments)),
                "output": projector.for_journal(answer.output),
                "outcome": outcome,
                "error": answer.error,
                "duration_ms": round((time.perf_counter() - started) * 1000, 3),
            },
        )

    async def _admit(
        self, principal: Principal, operation: str, trace_id: str, program: Program
    ) -> None:
        """Before a recorded run continues (resume, timer, recovery): the active policy must
        admit its program and this process must have its tools. Checked before the VM claims
        the run, which a refusal would otherwise leave taken with nothing running it."""
        refused = refused_calls(program, self.workspace.ledger.policy, self._llm_model)
        if refused:
            await self._deny(principal, operation, trace_id, program, refused)
        try:
            self.vm.validate(program)
        except ProgramError as exc:
            raise Invalid(f"run '{trace_id}': {exc}") from None

    async def _save(self, name: str, program: Program) -> SavedProgram:
        try:
            return await self.registry.save(name, program)
        except ValueError as exc:
            raise Invalid(str(exc)) from None

    async def _program_of_run(self, trace_id: str) -> Program:
        runs = self.workspace.journal.runs
        row = await runs.get(trace_id)
        if row is None:
            raise NotFound(f"no run '{trace_id}'; list_traces shows the runs")
        return Program.from_dict(await runs.program(row.program_hash))

    async def _trace(self, trace_id: str) -> Trace:
        try:
            return await self.workspace.trace(trace_id)
        except KeyError:
            raise NotFound(f"no run '{trace_id}'; list_traces shows the runs") from None


# --- listing runs ----------------------------------------------------------------------------


async def _page_runs(
    runs: RunStore,
    *,
    status: TraceStatus | None,
    program: str | None,
    since: float | None,
    until: float | None,
    limit: int,
    cursor: str | None,
) -> Page[RunSummary]:
    rows = await runs.page(
        status=None if status is None else status.value,
        program=program,
        since=since,
        until=until,
        after=None if cursor is None else _run_cursor(cursor),
        limit=limit + 1,
    )
    found = [RunSummary(r[0], r[1], r[2], TraceStatus(r[3]), r[4], r[5], r[6]) for r in rows]
    if len(found) <= limit:
        return Page(found, None)
    last = found[limit - 1]
    token = json.dumps([last.started_at, last.trace_id]).encode()
    return Page(found[:limit], base64.urlsafe_b64encode(token).decode())


def _run_cursor(cursor: str) -> tuple[float, str]:
    try:
        started, trace_id = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        return float(started), str(trace_id)
    except (ValueError, TypeError, binascii.Error):
        raise Invalid("cursor is not one list_traces returned; start again without it") from None


def _seq_cursor(cursor: str | None) -> int | None:
    if cursor is None:
        return None
    if not cursor.isdigit():
        raise Invalid("cursor is not one query_envelopes returned; start again without it")
    return int(cursor)


def _limit(limit: int) -> int:
    if not 1 <= limit <= MAX_PAGE:
        raise Invalid(f"limit must be between 1 and {MAX_PAGE}, got {limit}")
    return limit


def _aware(value: dt.datetime, name: str) -> dt.datetime:
    if value.tzinfo is None:
        raise Invalid(f"{name} {value.isoformat()} has no time zone: add Z or an offset")
    return value


def _seconds(value: dt.datetime | None, name: str) -> float | None:
    return None if value is None else _aware(value, name).timestamp()


def _micros(value: dt.datetime | None, name: str) -> int | None:
    if value is None:
        return None
    return (_aware(value, name) - _EPOCH) // dt.timedelta(microseconds=1)
