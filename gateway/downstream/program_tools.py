"""A downstream server's tools as the callables the VM runs: step `tool: NAME.TOOL`.

Each callable checks its arguments against the tool's current `inputSchema`, sends the step's
idempotency key in the request's `_meta` (IDEMPOTENCY_KEY_META) so that a server that knows
it can deduplicate a retried or recovered call, and turns the result into the step's output:
`structuredContent` when present, else the one text block (parsed when it is JSON), else the
content blocks as a list. `isError: true` raises, so the step's on_error and retries apply.
The tool's progress notifications become the step's progress (gateway.application.progress).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from mcp.types import CallToolResult, TextContent, Tool

from gateway.application.progress import step_reporter
from gateway.downstream.arguments import literal_problems, problems, schema_validator
from gateway.downstream.connection import DownstreamError, DownstreamServer
from kernel.tool_args import ArgProblem
from kernel.tools import Tool as KernelTool
from kernel.tools import ToolContext, declare_inputs

SEPARATOR = "."  # program tool names are SERVER.TOOL
IDEMPOTENCY_KEY_META = "io.ledgerflow/idempotency-key"
TRACE_ID_META = "io.ledgerflow/trace-id"


class DownstreamToolError(DownstreamError):
    """The downstream tool answered with `isError: true`."""


def program_tool_name(server: str, tool: str) -> str:
    return f"{server}{SEPARATOR}{tool}"


def program_tools(server: DownstreamServer) -> dict[str, KernelTool]:
    """The server's tools that its allow-list and deny-list let through, by program name."""
    return {
        program_tool_name(server.name, tool.name): _program_tool(server, tool)
        for tool in server.allowed_tools()
    }


def _program_tool(server: DownstreamServer, listed: Tool) -> KernelTool:
    name = program_tool_name(server.name, listed.name)
    validator = schema_validator(listed.input_schema or {"type": "object"})

    async def call_downstream(ctx: ToolContext, **arguments: Any) -> Any:
        found = current_problems(server, listed, validator, arguments)
        if found:
            raise DownstreamError(f"{name}: {join_problems(found)}")
        meta = {IDEMPOTENCY_KEY_META: ctx.idempotency_key, TRACE_ID_META: ctx.trace_id}
        progress = step_reporter(ctx.step_id)
        result = await server.call(listed.name, arguments, meta=meta, progress=progress)
        if result.is_error:
            raise DownstreamToolError(f"{name} failed: {error_text(result)}")
        return step_output(result)

    def check_literals(view: Mapping[str, Any]) -> list[ArgProblem]:
        return literal_problems(validator, view)

    call_downstream.__name__ = name
    call_downstream.__qualname__ = name
    properties = (listed.input_schema or {}).get("properties")
    accepts = frozenset(properties) if isinstance(properties, dict) else frozenset()
    return declare_inputs(call_downstream, accepts, check_literals)


def current_problems(
    server: DownstreamServer, listed: Tool, validator: Any, arguments: Mapping[str, Any]
) -> list[ArgProblem]:
    """What is wrong with `arguments` under the tool's schema as the server lists it now
    (`validator` holds the schema it was listed with; a relisted tool may have a new one)."""
    current = next((t for t in server.tools if t.name == listed.name), listed)
    if current.input_schema != listed.input_schema:
        validator = schema_validator(current.input_schema)
    return problems(validator, arguments)


def join_problems(found: list[ArgProblem]) -> str:
    return "; ".join(f"{p.field}: {p.message}" if p.field else p.message for p in found)


def step_output(result: CallToolResult) -> Any:
    if result.structured_content is not None:
        return result.structured_content
    blocks = result.content
    if len(blocks) == 1 and isinstance(blocks[0], TextContent):
        text = blocks[0].text
        try:
            return json.loads(text)
        except ValueError:
            return text
    return [block.model_dump(mode="json", by_alias=True, exclude_none=True) for block in blocks]


def error_text(result: CallToolResult) -> str:
    texts = [block.text for block in result.content if isinstance(block, TextContent)]
    text = " ".join(" ".join(texts).split())
    if not text and result.structured_content is not None:
        text = json.dumps(result.structured_content)[:300]
    return text or "the tool reported an error without a message"
