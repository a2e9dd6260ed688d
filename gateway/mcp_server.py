"""The MCP server: LedgerflowService's operations as MCP tools, resources and a prompt.

Tools are typed functions: the SDK derives each input schema from the signature and each output
schema from the pydantic model returned (structured output). Every call resolves its principal
with `principal_for_request(ctx)`; the service checks the scope and records the access. Domain
errors (`ServiceError`) become tool errors (`isError` with the message), never protocol errors,
so a model reads them and can act; anything else is a crash, reported without its details.

No `from __future__ import annotations` here: the SDK evaluates the tools' annotations, which
must not be strings naming things it cannot resolve.
"""

import datetime as dt
import inspect
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from importlib import metadata
from typing import Annotated, Any, TypeVar

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ResourceNotFoundError, ToolError
from mcp.types import ToolAnnotations
from pydantic import Field, SkipValidation

from gateway.dsl_guide import DSL_GUIDE
from gateway.mcp_models import (
    EnvelopePage,
    ErasureResult,
    ProgramList,
    ProgramVersion,
    ProgramView,
    ProofBundle,
    RunView,
    TracePage,
    TraceView,
    ValidationResult,
    VerifyResult,
    as_time,
)
from gateway.principal import Principal
from gateway.service import MAX_PAGE, LedgerflowService, NotFound, ServiceError
from governance import EnvelopeKind
from kernel import Program, StepRecord, TraceStatus

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])
PrincipalResolver = Callable[[Context[Any, Any]], Principal]

# --- inputs -----------------------------------------------------------------------------------

# Clients get the DSL's JSON schema, but the raw object reaches Program.from_dict, whose errors
# name the step and field (pydantic's own, raised before the tool runs, would bury them).
ProgramObject = Annotated[Program, SkipValidation]
ProgramArg = Annotated[
    ProgramObject | str,
    Field(
        description="The program (a JSON object; see the write_program prompt) or the name "
        "of a saved program"
    ),
]
Name = Annotated[str, Field(min_length=1, max_length=200)]
TraceId = Annotated[str, Field(min_length=1, max_length=200, description="A run's trace id")]
Limit = Annotated[int, Field(ge=1, le=MAX_PAGE, description="Page size")]
Cursor = Annotated[
    str | None, Field(description="next_cursor of the previous page; omit for the first page")
]
Since = Annotated[dt.datetime | None, Field(description="ISO 8601 with offset; inclusive")]
Until = Annotated[dt.datetime | None, Field(description="ISO 8601 with offset; exclusive")]

_READ = ToolAnnotations(read_only_hint=True, open_world_hint=False)
_RUN = ToolAnnotations(read_only_hint=False, destructive_hint=False, open_world_hint=True)
_WRITE = ToolAnnotations(read_only_hint=False, destructive_hint=False, open_world_hint=False)
_DESTROY = ToolAnnotations(read_only_hint=False, destructive_hint=True, open_world_hint=False)

INSTRUCTIONS = """\
ledgerflow runs programs (workflows of tool, llm, condition, parallel and wait steps)
deterministically and records every step in a hash-chained, signed ledger. Write a program (the
write_program prompt teaches the DSL), check it with validate_program, run it with run_program.
A run that waits for an outside event is SUSPENDED: deliver the event with resume_run.
"""


def build_server(
    service: LedgerflowService,
    principal_for_request: PrincipalResolver,
    *,
    lifespan: Callable[[], AbstractAsyncContextManager[None]] | None = None,
) -> MCPServer[Any]:
    """The MCP server over `service`. `lifespan` runs around serving (recovery, timers)."""
    server: MCPServer[Any] = MCPServer(
        "ledgerflow",
        title="ledgerflow",
        instructions=INSTRUCTIONS,
        version=_version(),
        lifespan=None if lifespan is None else _server_lifespan(lifespan),
    )
    who = principal_for_request
    tool = _registrar(server)

    @tool("Run a program", _RUN)
    async def run_program(
        program: ProgramArg,
        ctx: Context[Any, Any],
        context: Annotated[
            dict[str, Any] | None,
            Field(
                description='The run\'s variables. Mark secrets {"$secret": VALUE, '
                '"subject": "DATA-SUBJECT-ID"}: only a vault ref reaches the run and the ledger'
            ),
        ] = None,
        idempotency_key: Annotated[
            str | None, Field(description="Retrying with the same key returns the same run")
        ] = None,
        save_as: Annotated[
            str | None, Field(description="Also save the program under this name")
        ] = None,
    ) -> TraceView:
        """Run a program until it ends or suspends, and return its trace. A SUSPENDED run
        waits for resume_run. Progress notifications report each step."""
        progress = _Progress(ctx)
        trace = await _tool(
            service.run_program(
                who(ctx),
                program,
                context,
                idempotency_key=idempotency_key,
                save_as=save_as,
                on_step=progress.step,
            )
        )
        return TraceView.of(trace)

    @tool("Resume a suspended run", _RUN)
    async def resume_run(
        trace_id: TraceId,
        ctx: Context[Any, Any],
        event: Annotated[
            Any, Field(description="Any JSON value: the suspended step's output from now on")
        ] = None,
        event_id: Annotated[
            str | None, Field(description="Delivering the same event id twice is refused")
        ] = None,
    ) -> TraceView:
        """Deliver an event to a SUSPENDED run and continue it."""
        progress = _Progress(ctx)
        trace = await _tool(
            service.resume_run(who(ctx), trace_id, event, event_id=event_id, on_step=progress.step)
        )
        return TraceView.of(trace)

    @tool("Cancel a run", _DESTROY)
    async def cancel_run(
        trace_id: TraceId,
        ctx: Context[Any, Any],
        reason: Annotated[str, Field(max_length=500)] = "cancelled",
    ) -> TraceView:
        """Cancel a SUSPENDED run (or one running in this server)."""
        return TraceView.of(await _tool(service.cancel_run(who(ctx), trace_id, reason)))

    @tool("Save a program", _WRITE.model_copy(update={"idempotent_hint": True}))
    async def save_program(
        program: Annotated[ProgramObject, Field(description="The program (a JSON object)")],
        ctx: Context[Any, Any],
        name: Annotated[
            str | None, Field(description="Save under this name (default: the program's name)")
        ] = None,
    ) -> ProgramView:
        """Save a program as the next version of its name (saving an unchanged program again
        returns the existing version). Run it later by name."""
        return ProgramView.of(await _tool(service.save_program(who(ctx), program, name)))

    @tool("Check a program", _READ)
    async def validate_program(program: ProgramArg, ctx: Context[Any, Any]) -> ValidationResult:
        """Report every problem that would stop a program running here, without running it."""
        return ValidationResult.of(await _tool(service.validate_program(who(ctx), program)))

    @tool("Read a run's trace", _READ)
    async def get_trace(trace_id: TraceId, ctx: Context[Any, Any]) -> TraceView:
        """A run as recorded, step by step."""
        return TraceView.of(await _tool(service.get_trace(who(ctx), trace_id)))

    @tool("List runs", _READ)
    async def list_traces(
        ctx: Context[Any, Any],
        status: TraceStatus | None = None,
        program: Annotated[str | None, Field(description="A program name or hash")] = None,
        since: Since = None,
        until: Until = None,
        limit: Limit = 50,
        cursor: Cursor = None,
    ) -> TracePage:
        """Runs, newest first, filtered by status, program and start time."""
        page = await _tool(
            service.list_traces(
                who(ctx),
                status=status,
                program=program,
                since=since,
                until=until,
                limit=limit,
                cursor=cursor,
            )
        )
        runs = [
            RunView(
                trace_id=r.trace_id,
                program_name=r.program_name,
                program_hash=r.program_hash,
                status=r.status,
                started_at=as_time(r.started_at),
                updated_at=as_time(r.updated_at),
                error=r.error,
            )
            for r in page.items
        ]
        return TracePage(traces=runs, next_cursor=page.next_cursor)

    @tool("Read a saved program", _READ)
    async def get_program(
        name: Name,
        ctx: Context[Any, Any],
        version: Annotated[int | None, Field(ge=1, description="Default: the latest")] = None,
    ) -> ProgramVersion:
        """A saved program's body and version."""
        saved = await _tool(service.get_program(who(ctx), name, version))
        return ProgramVersion(**ProgramView.of(saved).model_dump(), program=saved.body)

    @tool("List saved programs", _READ)
    async def list_programs(ctx: Context[Any, Any]) -> ProgramList:
        """The latest version of every saved program; deleted ones are flagged retired."""
        saved = await _tool(service.list_programs(who(ctx)))
        return ProgramList(programs=[ProgramView.of(s) for s in saved])

    @tool("Delete a saved program", _DESTROY)
    async def delete_program(name: Name, ctx: Context[Any, Any]) -> ProgramView:
        """Retire a saved program: no new runs by its name. Its versions, runs, traces and
        envelopes stay."""
        return ProgramView.of(await _tool(service.delete_program(who(ctx), name)))

    @tool("Query the ledger", _READ)
    async def query_envelopes(
        ctx: Context[Any, Any],
        execution_id: Annotated[str | None, Field(description="A trace id")] = None,
        kind: EnvelopeKind | None = None,
        policy_hash: str | None = None,
        since: Since = None,
        until: Until = None,
        limit: Limit = 100,
        cursor: Cursor = None,
    ) -> EnvelopePage:
        """Ledger envelopes in seq order (the audit records of runs, accesses and erasures)."""
        page = await _tool(
            service.query_envelopes(
                who(ctx),
                execution_id=execution_id,
                kind=kind,
                policy_hash=policy_hash,
                since=since,
                until=until,
                limit=limit,
                cursor=cursor,
            )
        )
        return EnvelopePage(envelopes=page.items, next_cursor=page.next_cursor)

    @tool("Prove an envelope", _READ)
    async def get_proof(
        seq: Annotated[int, Field(ge=0, description="The envelope's seq")], ctx: Context[Any, Any]
    ) -> ProofBundle:
        """A self-contained proof that an envelope is in the signed ledger."""
        return ProofBundle.model_validate(await _tool(service.get_proof(who(ctx), seq)))

    @tool("Audit the ledger", _READ)
    async def verify_ledger(
        ctx: Context[Any, Any],
        verifier_keys: Annotated[
            list[str] | None, Field(description="Keys you trust (default: this ledger's own)")
        ] = None,
    ) -> VerifyResult:
        """Check the hash chain, every envelope, the erasure rule and every signed checkpoint."""
        report = await _tool(service.verify_ledger(who(ctx), verifier_keys))
        return VerifyResult(
            ok=report.ok,
            entries_checked=report.entries_checked,
            checkpoints_checked=report.checkpoints_checked,
            first_bad_seq=report.first_bad_seq,
            bad_checkpoint=report.bad_checkpoint,
            reason=report.reason,
            keys=report.keys,
            verifier_keys=service.verifier_keys,
        )

    @tool("Erase a data subject", _DESTROY)
    async def erase_subject(
        subject: Annotated[str, Field(min_length=1, description="The data subject's id")],
        reason: Annotated[str, Field(min_length=1, description="e.g. the GDPR request")],
        ctx: Context[Any, Any],
    ) -> ErasureResult:
        """Crypto-shred a subject's secrets (GDPR art. 17). Traces show them as
        [REDACTED_TOMBSTONE] from now on; the ledger still verifies."""
        receipt = await _tool(service.erase_subject(who(ctx), subject, reason))
        return ErasureResult(
            request_id=receipt.request_id,
            subject_hash=receipt.subject_hash,
            refs_erased=list(receipt.ref_ids),
            erased_at=receipt.erased_at,
        )

    @server.resource(
        "program://{name}",
        name="program",
        description="A saved program's latest version (JSON)",
        mime_type="application/json",
    )
    async def program_resource(name: str, ctx: Context[Any, Any]) -> str:
        saved = await _resource(service.get_program(who(ctx), name))
        return json.dumps(saved.body, indent=2)

    @server.resource(
        "trace://{trace_id}",
        name="trace",
        description="A run's trace (JSON), as get_trace returns it",
        mime_type="application/json",
    )
    async def trace_resource(trace_id: str, ctx: Context[Any, Any]) -> str:
        trace = await _resource(service.get_trace(who(ctx), trace_id))
        return TraceView.of(trace).model_dump_json(indent=2)

    @server.prompt(title="Write a ledgerflow program")
    def write_program(
        task: Annotated[str, Field(description="What the program should do")] = "",
    ) -> str:
        """How to write a ledgerflow program: steps, fields, branches, references, expressions."""
        tools = ", ".join(service.tool_names) or "(none registered)"
        ask = f"\n\nWrite a program for this task:\n{task}" if task.strip() else ""
        return f"{DSL_GUIDE}\nTools this server can call: {tools}.{ask}"

    return server


def _registrar(server: MCPServer[Any]) -> Callable[[str, ToolAnnotations], Callable[[F], F]]:
    """`@tool(title, annotations)`: registers with the docstring, dedented, as description."""

    def tool(title: str, annotations: ToolAnnotations) -> Callable[[F], F]:
        def register(fn: F) -> F:
            description = inspect.cleandoc(fn.__doc__ or "")
            server.add_tool(fn, title=title, description=description, annotations=annotations)
            return fn

        return register

    return tool


class _Progress:
    """One progress notification per recorded step (the SDK sends nothing without a token)."""

    def __init__(self, ctx: Context[Any, Any]) -> None:
        self._ctx = ctx
        self._count = 0

    async def step(self, record: StepRecord) -> None:
        self._count += 1
        message = f"step '{record.step_id}' {record.status.value}"
        await self._ctx.report_progress(self._count, None, message)


async def _tool(work: Awaitable[T]) -> T:
    try:
        return await work
    except ServiceError as exc:
        raise ToolError(str(exc)) from None


async def _resource(work: Awaitable[T]) -> T:
    try:
        return await work
    except NotFound as exc:
        raise ResourceNotFoundError(str(exc)) from None
    except ServiceError as exc:
        raise ResourceError(str(exc)) from None


def _server_lifespan(
    background: Callable[[], AbstractAsyncContextManager[None]],
) -> Callable[[MCPServer[Any]], AbstractAsyncContextManager[None]]:
    @asynccontextmanager
    async def lifespan(_: MCPServer[Any]) -> AsyncIterator[None]:
        async with background():
            yield None

    return lifespan


def _version() -> str:
    try:
        return metadata.version("ledgerflow")
    except metadata.PackageNotFoundError:
        return "unknown"
