"""The MCP server: LedgerflowService's operations as MCP tools, resources and a prompt, each
group registered by its own module (`run_tools`, `program_tools`, `audit_tools`, `resources`,
`prompts`), and the downstream tools exposed to clients (`gateway_server`, pass-through).

Tools are typed functions: the SDK derives each input schema from the signature and each output
schema from the pydantic model returned (structured output). Every call resolves its principal
with the resolver given (the stdio operator, or the HTTP request's token); the service checks
the scope and records the access.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from importlib import metadata
from typing import Any

from mcp.server.mcpserver import MCPServer

from gateway.application.service import LedgerflowService
from gateway.mcp import audit_tools, program_tools, prompts, resources, run_tools
from gateway.mcp.calls import PrincipalResolver
from gateway.mcp.gateway_server import GatewayServer

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
    server = GatewayServer(
        service,
        principal_for_request,
        name="ledgerflow",
        title="ledgerflow",
        instructions=INSTRUCTIONS,
        version=_version(),
        lifespan=None if lifespan is None else _server_lifespan(lifespan),
    )
    for tools in (run_tools, program_tools, audit_tools):
        tools.register(server, service, principal_for_request)
    resources.register(server, service, principal_for_request)
    prompts.register(server, service)
    return server


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
