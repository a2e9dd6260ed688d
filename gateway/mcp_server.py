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
from typing import Annotated, Any, Literal, TypeVar

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ResourceNotFoundError, ToolError
from mcp.types import ToolAnnotations
from pydantic import BaseModel, Field, SkipValidation

from gateway.principal import Principal
from gateway.program_registry import SavedProgram
from gateway.service import MAX_PAGE, LedgerflowService, NotFound, ProgramCheck, ServiceError
from governance import EnvelopeKind, GovernanceEnvelope
from kernel import Program, StepRecord, StepStatus, StepType, Trace, TraceStatus

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

# --- outputs ----------------------------------------------------------------------------------


class StepView(BaseModel):
    step_id: str
    type: StepType
    status: StepStatus
    output: Any = None
    error: str | None = None
    attempts: int
    duration_ms: float
    parent: str | None = Field(None, description="The parallel block of a child step")

    @classmethod
    def of(cls, record: StepRecord) -> "StepView":
        return cls(
            step_id=record.step_id,
            type=record.type,
            status=record.status,
            output=record.output,
            error=record.error,
            attempts=record.attempts,
            duration_ms=round(record.duration_ms, 3),
            parent=record.parent,
        )


class MetricsView(BaseModel):
    steps_executed: int
    llm_calls: int
    tool_calls: int
    retries: int
    total_tokens: int
    cost_usd: float


class TraceView(BaseModel):
    """A run as recorded. Secrets show as {"$ref", "commitment"}, erased ones as tombstones."""

    trace_id: str
    program_name: str
    program_hash: str
    status: TraceStatus
    steps: list[StepView]
    final_output: Any = None
    error: str | None = None
    context: dict[str, Any]
    started_at: dt.datetime
    finished_at: dt.datetime | None = None
    cursor: str | None = Field(None, description="A suspended run's next step")
    suspended_step: str | None = None
    wake_at: dt.datetime | None = Field(None, description="When a timer acts on the suspension")
    metrics: MetricsView
    root_hash: str = Field(description="The last chained state hash")

    @classmethod
    def of(cls, trace: Trace) -> "TraceView":
        m = trace.metrics
        return cls(
            trace_id=trace.trace_id,
            program_name=trace.program_name,
            program_hash=trace.program_hash,
            status=trace.status,
            steps=[StepView.of(r) for r in trace.steps],
            final_output=trace.final_output,
            error=trace.error,
            context=trace.context,
            started_at=_time(trace.started_at),
            finished_at=None if trace.finished_at is None else _time(trace.finished_at),
            cursor=trace.cursor,
            suspended_step=trace.suspended_step,
            wake_at=None if trace.wake_at is None else _time(trace.wake_at),
            metrics=MetricsView(
                steps_executed=m.steps_executed,
                llm_calls=m.llm_calls,
                tool_calls=m.tool_calls,
                retries=m.retries,
                total_tokens=m.total_tokens,
                cost_usd=m.cost_usd,
            ),
            root_hash=trace.root_hash,
        )


class RunView(BaseModel):
    trace_id: str
    program_name: str
    program_hash: str
    status: TraceStatus
    started_at: dt.datetime
    updated_at: dt.datetime
    error: str | None = None


class TracePage(BaseModel):
    traces: list[RunView]
    next_cursor: str | None = None


class ProgramView(BaseModel):
    name: str
    version: int
    hash: str = Field(description="The program hash that runs of this version record")
    saved_at: dt.datetime
    retired: bool = Field(description="Deleted: no new runs; history stays")

    @classmethod
    def of(cls, saved: SavedProgram) -> "ProgramView":
        return cls(
            name=saved.name,
            version=saved.version,
            hash=saved.hash,
            saved_at=saved.saved_at,
            retired=saved.retired,
        )


class ProgramVersion(ProgramView):
    program: dict[str, Any]


class ProgramList(BaseModel):
    programs: list[ProgramView]


class ValidationResult(BaseModel):
    valid: bool
    program_name: str | None = None
    program_hash: str | None = None
    errors: list[str]
    warnings: list[str]

    @classmethod
    def of(cls, check: ProgramCheck) -> "ValidationResult":
        return cls(
            valid=check.ok,
            program_name=check.program_name,
            program_hash=check.program_hash,
            errors=check.errors,
            warnings=check.warnings,
        )


class EnvelopePage(BaseModel):
    envelopes: list[GovernanceEnvelope]
    next_cursor: str | None = None


class ProofBundle(BaseModel):
    """Self-contained: `ledgerflow verify-proof` checks it with the verifier key alone."""

    format: str
    origin: str
    envelope: GovernanceEnvelope
    leaf_index: int
    tree_size: int
    inclusion_proof: list[str]
    checkpoint: str = Field(description="The signed checkpoint note")


class VerifyResult(BaseModel):
    ok: bool
    entries_checked: int
    checkpoints_checked: int
    first_bad_seq: int | None = None
    bad_checkpoint: int | None = None
    reason: str | None = None
    keys: Literal["given", "stored"]
    verifier_keys: list[str] = Field(description="This ledger's checkpoint verifier keys")


class ErasureResult(BaseModel):
    request_id: str
    subject_hash: str = Field(description="SHA-256 of the subject id (the id is not kept)")
    refs_erased: list[str]
    erased_at: dt.datetime


DSL_GUIDE = """\
# Writing a ledgerflow program

A program is a JSON object: `name`, `steps` (a non-empty array), optional `description` and
budgets `max_steps`, `max_tokens`, `max_cost_usd`, `max_duration_seconds`, `max_stalled_steps`.
Every object is strict: an unknown field, or a field of another step type, is an error naming
the step and the field. A program whose steps can loop must set `max_steps`.

## Steps
Every step has `id` (letters, digits, `_`; not starting with a digit) and `type`. Optional on
every step: `on_error` (`fail` default, `skip`: output null, `retry`), `max_retries` (total
attempts, default 3), `backoff` ({base_seconds, factor, max_seconds}); on top-level steps
`is_terminal` (the run ends SUCCESS after it) and `next_step` (jump to that step after it).

- `tool`: `tool` (a registered tool name), `args` (keyword arguments, interpolated; without
  `args` the tool gets the context values its signature names), `output_key` (also store the
  output under this variable), `timeout_seconds` + `on_timeout` (`fail`|`fallback`),
  `suspend_timeout_seconds` + `on_suspend_timeout` (`fail`|`continue`). A tool that returns
  "PENDING" suspends the run: resume_run's event becomes the step's output.
- `llm`: `prompt` (required), `system`, `allowed_outputs` (the stripped reply must be one of
  these), `output_schema` (a JSON Schema, or "json", "int", "float", "bool": the output is the
  parsed value), `model`, `temperature`, `options`, `output_key`, `timeout_seconds`,
  `on_timeout`.
- `condition`: `condition` (an expression), `then`, `otherwise` (step ids; a missing one means
  the next step in the array). A condition that cannot be evaluated fails the run.
- `parallel`: `parallel_steps` (tool or llm children), `max_concurrency`; a child may set
  `depends_on` (sibling ids) and may read only siblings it depends on. The block's output is
  {child_id: output}; it fails if a child fails.
- `wait`: `seconds` or `until` (ISO 8601 with an offset): a durable timer.

## Control flow
Steps run in array order. A step named by a condition's `then`/`otherwise` is a branch target:
the run ends SUCCESS after it unless it has `next_step`. So after a guard, give the branch it
jumps to a `next_step` to rejoin the main path, and end other branches with `is_terminal`.

## Values
`$key` is a context value; `$step_id` or `$step_id.output` a step's output; `$step_id.output.a.0.b`
a path into it; `$out_key` a value stored by `output_key`. A string that is exactly one reference
keeps the value's type; inside text write `${step_id.output.x}` (rendered as text, non-strings as
JSON); `$$` is a literal `$`. Interpolation applies to `args`, `prompt` and `system`. A context
key may not equal a step id or an output_key. After a resume, `$__webhook__` is the event.

## Condition expressions
Precedence, lowest first: `or`, `and`, `not`, comparisons; parentheses group. Comparisons:
`==`, `!=`, `<`, `<=`, `>`, `>=`, `in`, `not in`, `contains` (`a contains b` is `b in a`).
Literals: 'single' or "double" quoted strings, integers, floats, true, false, null; references
`$a.b.c`. A lone operand tests truthiness (`$approved`, `not $errors`). Types are strict:
comparing a string with a number is an error, never false. No arithmetic, no calls.

## Example
{"name": "payment_flow", "max_steps": 20, "steps": [
  {"id": "reserve", "type": "tool", "tool": "reserve_funds",
   "args": {"order_id": "$order_id", "amount": "$amount"}},
  {"id": "amount_guard", "type": "condition", "condition": "$amount <= 1000",
   "then": "initiate", "otherwise": "review"},
  {"id": "initiate", "type": "tool", "tool": "initiate_payment",
   "args": {"order_id": "$order_id", "amount": "$amount"}, "next_step": "capture"},
  {"id": "capture", "type": "tool", "tool": "capture_payment",
   "args": {"order_id": "$order_id", "status": "$initiate.output.status"}},
  {"id": "receipt", "type": "tool", "tool": "send_receipt",
   "args": {"order_id": "$order_id"}, "is_terminal": true},
  {"id": "review", "type": "tool", "tool": "flag_for_review",
   "args": {"order_id": "$order_id"}, "is_terminal": true}]}

Check a program with validate_program before run_program; save versions with save_program.
"""


# --- the server -------------------------------------------------------------------------------

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
                started_at=_time(r.started_at),
                updated_at=_time(r.updated_at),
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


def _time(seconds: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(seconds, dt.UTC)


def _version() -> str:
    try:
        return metadata.version("ledgerflow")
    except metadata.PackageNotFoundError:
        return "unknown"
