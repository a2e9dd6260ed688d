"""A downstream server's tools offered to the gateway's own MCP clients (`expose = true`).

Each allowed tool is offered as SERVER__TOOL with the downstream title, description and input
schema. The name must suit every client: Claude Desktop takes 1-64 letters, digits, '_' and
'-', so a tool whose offered name would not is left out with a warning (it stays callable from
programs as SERVER.TOOL). Arguments are checked against the schema before anything is sent;
the call itself passes through `guard` (the circuit breakers of a server, named SERVER.TOOL).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

from mcp.types import CallToolResult, TextContent, Tool

from gateway.application.passthrough import (
    EXPOSED_SEPARATOR,
    Answer,
    ExposedTool,
    FailedAnswer,
    ProgressSink,
)
from gateway.downstream.arguments import schema_validator
from gateway.downstream.connection import DownstreamServer
from gateway.downstream.program_tools import (
    current_problems,
    error_text,
    join_problems,
    program_tool_name,
    step_output,
)

_OFFERABLE = re.compile(r"[A-Za-z0-9_-]{1,64}")
logger = logging.getLogger("ledgerflow.downstream")

Send = Callable[[dict[str, Any], ProgressSink | None], Any]
Guard = Callable[[str, Any], Any]


def exposed_name(server: str, tool: str) -> str:
    return f"{server}{EXPOSED_SEPARATOR}{tool}"


def exposed_tools(server: DownstreamServer, guard: Guard | None = None) -> list[ExposedTool]:
    """The tools `server` offers to MCP clients: none unless its config says `expose`."""
    if not server.config.expose:
        return []
    offered = []
    for listed in server.allowed_tools():
        name = exposed_name(server.name, listed.name)
        if not _OFFERABLE.fullmatch(name):
            logger.warning(
                "server '%s': tool '%s' is not offered to MCP clients: '%s' is not 1-64 "
                "letters, digits, '_' or '-'",
                server.name,
                listed.name,
                name,
            )
            continue
        offered.append(_exposed(server, listed, name, guard))
    return offered


def _exposed(server: DownstreamServer, listed: Tool, name: str, guard: Guard | None) -> ExposedTool:
    target = program_tool_name(server.name, listed.name)
    validator = schema_validator(listed.input_schema or {"type": "object"})

    async def send(arguments: dict[str, Any], progress: ProgressSink | None) -> Answer:
        result = await server.call(listed.name, arguments, progress=progress)
        if result.is_error:
            raise FailedAnswer(Answer(step_output(result), result, True, error_text(result)))
        return Answer(step_output(result), result, False)

    guarded: Send = send if guard is None else guard(target, send)

    async def call(arguments: dict[str, Any], progress: ProgressSink | None) -> Answer:
        found = current_problems(server, listed, validator, arguments)
        if found:  # the caller's mistake: nothing is sent, and the breaker does not count it
            text = f"{name}: {join_problems(found)}; nothing was sent to server '{server.name}'"
            refused = CallToolResult(content=[TextContent(type="text", text=text)], is_error=True)
            return Answer(None, refused, True, text)
        answer: Answer = await guarded(arguments, progress)
        return answer

    return ExposedTool(
        name=name,
        target=target,
        server=server.name,
        description=listed.description or "",
        input_schema=listed.input_schema or {"type": "object"},
        call=call,
        rate_limit=server.config.rate,
        title=listed.title,
        output_schema=listed.output_schema,
        annotations=None
        if listed.annotations is None
        else listed.annotations.model_dump(mode="json", by_alias=True, exclude_none=True),
    )
