"""The MCP tools on runs: run_program, resume_run, cancel_run, get_trace, list_traces.

No `from __future__ import annotations` here: the SDK evaluates the tools' annotations.
"""

from typing import Annotated, Any

from mcp.server.mcpserver import Context, MCPServer
from pydantic import Field

from gateway.application.service import LedgerflowService
from gateway.mcp.arguments import (
    DESTROY,
    READ,
    RUN,
    Cursor,
    Limit,
    ProgramArg,
    Since,
    TraceId,
    Until,
)
from gateway.mcp.calls import PrincipalResolver, Progress, registrar, tool_call
from gateway.mcp.models import RunView, TracePage, TraceView, as_time
from kernel import TraceStatus


def register(server: MCPServer[Any], service: LedgerflowService, who: PrincipalResolver) -> None:
    tool = registrar(server)

    @tool("Run a program", RUN)
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
        progress = Progress(ctx)
        trace = await tool_call(
            service.run_program(
                who(ctx),
                program,
                context,
                idempotency_key=idempotency_key,
                save_as=save_as,
                on_step=progress.step,
                on_progress=progress.tool,
            )
        )
        return TraceView.of(trace)

    @tool("Resume a suspended run", RUN)
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
        progress = Progress(ctx)
        trace = await tool_call(
            service.resume_run(
                who(ctx),
                trace_id,
                event,
                event_id=event_id,
                on_step=progress.step,
                on_progress=progress.tool,
            )
        )
        return TraceView.of(trace)

    @tool("Cancel a run", DESTROY)
    async def cancel_run(
        trace_id: TraceId,
        ctx: Context[Any, Any],
        reason: Annotated[str, Field(max_length=500)] = "cancelled",
    ) -> TraceView:
        """Cancel a SUSPENDED run (or one running in this server)."""
        return TraceView.of(await tool_call(service.cancel_run(who(ctx), trace_id, reason)))

    @tool("Read a run's trace", READ)
    async def get_trace(trace_id: TraceId, ctx: Context[Any, Any]) -> TraceView:
        """A run as recorded, step by step."""
        return TraceView.of(await tool_call(service.get_trace(who(ctx), trace_id)))

    @tool("List runs", READ)
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
        page = await tool_call(
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
