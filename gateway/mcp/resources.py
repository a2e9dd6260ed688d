"""The MCP resources: `program://{name}` (a saved program) and `trace://{trace_id}` (a run)."""

import json
from typing import Any

from mcp.server.mcpserver import Context, MCPServer

from gateway.application.service import LedgerflowService
from gateway.mcp.calls import PrincipalResolver, resource_call
from gateway.mcp.models import TraceView


def register(server: MCPServer[Any], service: LedgerflowService, who: PrincipalResolver) -> None:
    @server.resource(
        "program://{name}",
        name="program",
        description="A saved program's latest version (JSON)",
        mime_type="application/json",
    )
    async def programresource_call(name: str, ctx: Context[Any, Any]) -> str:
        saved = await resource_call(service.get_program(who(ctx), name))
        return json.dumps(saved.body, indent=2)

    @server.resource(
        "trace://{trace_id}",
        name="trace",
        description="A run's trace (JSON), as get_trace returns it",
        mime_type="application/json",
    )
    async def traceresource_call(trace_id: str, ctx: Context[Any, Any]) -> str:
        trace = await resource_call(service.get_trace(who(ctx), trace_id))
        return TraceView.of(trace).model_dump_json(indent=2)
