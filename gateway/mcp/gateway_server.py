"""The MCPServer that also offers the exposed downstream tools (pass-through).

ledgerflow's own tools are registered functions; the exposed ones (SERVER__TOOL, from
`LedgerflowService.exposed`) come and go with the downstream servers' lists, so they are added
at listing time, each caller seeing those its token and the policy let it call, and every call
of a SERVER__TOOL name goes to `LedgerflowService.call_tool`, which authorizes and records it
(an unknown one gets a did-you-mean). Own tool names never hold '__', so the two cannot clash.

When the exposed list changes, clients hear `notifications/tools/list_changed`: through the
subscription bus (clients of the 2026-07-28 protocol listen there) and on the connection of
every session that has listed tools (earlier protocol versions; a 2026-07-28 connection drops
that copy, as the protocol wants).
"""

from __future__ import annotations

import asyncio
import collections
import logging
from typing import Any

from mcp.server.context import ServerRequestContext
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.stdio import stdio_server
from mcp.server.subscriptions import InMemorySubscriptionBus, ToolsListChanged
from mcp.shared.inbound import find_invalid_x_mcp_header, x_mcp_header_map
from mcp.types import CallToolResult, ListToolsResult, PaginatedRequestParams, ToolAnnotations
from mcp.types import Tool as MCPTool

from gateway.application.passthrough import EXPOSED_SEPARATOR, ExposedTool
from gateway.application.service import LedgerflowService, ServiceError
from gateway.mcp.calls import PrincipalResolver
from gateway.mcp.stdio_pipes import wire_pipes

CALL_ID_META = "io.ledgerflow/call-id"  # the execution id of the call's envelope
SEQ_META = "io.ledgerflow/seq"  # and its seq, for get_proof
MAX_LISTENING = 1024
# What the Mcp-Param header check needs of a schema that declares no header: nothing to compare.
_NO_HEADER_DECLARED: dict[str, Any] = {"type": "object"}
logger = logging.getLogger("ledgerflow.mcp")


class GatewayServer(MCPServer[Any]):
    def __init__(self, service: LedgerflowService, who: PrincipalResolver, **settings: Any) -> None:
        self._bus = InMemorySubscriptionBus()
        self._header_schemas: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
        super().__init__(subscriptions=self._bus, **settings)
        self._service = service
        self._who = who
        # The last request's session proxy of each connection that listed tools (by its HTTP
        # session id; stdio has one connection): its standalone channel outlives the request.
        self._listing: collections.OrderedDict[str, Any] = collections.OrderedDict()
        self._announcing: set[asyncio.Task[None]] = set()
        service.exposed.on_change(self._exposed_changed)

    async def _handle_list_tools(
        self, ctx: ServerRequestContext[Any], params: PaginatedRequestParams | None
    ) -> ListToolsResult:
        # The SDK's handler (mcp 2.3), overridden: `list_tools` is not told who is asking.
        self._remember(ctx)
        principal = self._who(Context(request_context=ctx, mcp_server=self))
        offered = [_listed(tool) for tool in self._service.exposed_for(principal)]
        return ListToolsResult(tools=[*await self.list_tools(), *offered])

    async def run_stdio_async(self) -> None:
        # The SDK's transport over stdin and stdout read and written on the event loop
        # (gateway.mcp.stdio_pipes: no thread hand-off per line); on Windows, the SDK's own.
        async with wire_pipes() as pipes:
            if pipes is None:
                await super().run_stdio_async()
                return
            wire: Any = pipes  # the SDK's transport types them as anyio files: the same calls
            async with stdio_server(stdin=wire.stdin, stdout=wire.stdout) as (reading, writing):
                lowlevel = self._lowlevel_server  # as MCPServer.run_stdio_async runs it
                await lowlevel.run(reading, writing, lowlevel.create_initialization_options())

    def _tool_input_schema(self, name: str) -> dict[str, Any] | None:
        # The SDK (mcp 2.3) asks for this before every HTTP tools/call, only to check the call's
        # Mcp-Param-* headers against the schema's x-mcp-header declarations, and walks the
        # schema twice to find them: ~250 positions for run_program's program schema, a third
        # of a millisecond per call. None of our tools declares a header, so it gets a schema
        # with none to find (the check's answer is the same); one that declares any gets its own.
        schema = super()._tool_input_schema(name)
        if schema is None:
            return None
        known = self._header_schemas.get(name)
        if known is None or known[0] is not schema:
            declares = find_invalid_x_mcp_header(schema) is None and bool(x_mcp_header_map(schema))
            known = self._header_schemas[name] = (
                schema,
                schema if declares else _NO_HEADER_DECLARED,
            )
        return known[1]

    def _remember(self, ctx: ServerRequestContext[Any]) -> None:
        headers = getattr(ctx.request, "headers", None)
        key = (headers.get("mcp-session-id") if headers is not None else None) or ""
        self._listing[key] = ctx.session
        self._listing.move_to_end(key)
        while len(self._listing) > MAX_LISTENING:  # sessions that ended without a word
            self._listing.popitem(last=False)

    async def call_tool(
        self, name: str, arguments: dict[str, Any], context: Context[Any, Any] | None = None
    ) -> Any:
        if EXPOSED_SEPARATOR not in name:  # one of ledgerflow's own tools
            return await super().call_tool(name, arguments, context)
        if context is None:
            context = Context(mcp_server=self)
        try:
            record = await self._service.call_tool(
                self._who(context), name, arguments, progress=context.report_progress
            )
        except ServiceError as exc:
            raise ToolError(str(exc)) from None
        result = record.answer.result
        if not isinstance(result, CallToolResult):  # never: the downstream side builds them
            raise ToolError(f"{name}: no result")
        meta = {**(result.meta or {}), CALL_ID_META: record.call_id, SEQ_META: record.seq}
        return result.model_copy(update={"meta": meta})

    def _exposed_changed(self) -> None:
        try:
            task = asyncio.get_running_loop().create_task(self._announce())
        except RuntimeError:  # no loop: nobody is connected to hear it
            return
        self._announcing.add(task)
        task.add_done_callback(self._announcing.discard)

    async def _announce(self) -> None:
        await self._bus.publish(ToolsListChanged())
        for key, session in list(self._listing.items()):
            try:
                await session.send_tool_list_changed()
            except Exception:  # the connection has gone away: forget it
                self._listing.pop(key, None)


def _listed(tool: ExposedTool) -> MCPTool:
    return MCPTool(
        name=tool.name,
        title=tool.title,
        description=tool.description,
        input_schema=tool.input_schema,
        output_schema=tool.output_schema,
        annotations=None
        if tool.annotations is None
        else ToolAnnotations.model_validate(tool.annotations),
    )
