"""How the MCP tools and resources call the application service: registration with the
docstring as description, domain errors as tool errors, and progress per recorded step.

Domain errors (`ServiceError`) become tool errors (`isError` with the message), never protocol
errors, so a model reads them and can act; anything else is a crash, reported without its
details.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ResourceNotFoundError, ToolError
from mcp.types import ToolAnnotations

from gateway.application.principal import Principal
from gateway.application.service import NotFound, ServiceError
from kernel import StepRecord

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])
PrincipalResolver = Callable[[Context[Any, Any]], Principal]


def registrar(server: MCPServer[Any]) -> Callable[[str, ToolAnnotations], Callable[[F], F]]:
    """`@tool(title, annotations)`: registers with the docstring, dedented, as description."""

    def tool(title: str, annotations: ToolAnnotations) -> Callable[[F], F]:
        def register(fn: F) -> F:
            description = inspect.cleandoc(fn.__doc__ or "")
            server.add_tool(fn, title=title, description=description, annotations=annotations)
            return fn

        return register

    return tool


class Progress:
    """One progress notification per recorded step, and one per progress notification a
    step's downstream tool sends (the SDK sends nothing without a progress token). The count
    goes up by one each time, as the protocol wants it to increase."""

    def __init__(self, ctx: Context[Any, Any]) -> None:
        self._ctx = ctx
        self._count = 0

    async def step(self, record: StepRecord) -> None:
        await self._send(f"step '{record.step_id}' {record.status.value}")

    async def tool(
        self, step_id: str, progress: float, total: float | None, message: str | None
    ) -> None:
        done = f"{progress:g}" if total is None else f"{progress:g}/{total:g}"
        await self._send(f"step '{step_id}': {message or 'working'} ({done})")

    async def _send(self, message: str) -> None:
        self._count += 1
        await self._ctx.report_progress(self._count, None, message)


async def tool_call(work: Awaitable[T]) -> T:
    try:
        return await work
    except ServiceError as exc:
        raise ToolError(str(exc)) from None


async def resource_call(work: Awaitable[T]) -> T:
    try:
        return await work
    except NotFound as exc:
        raise ResourceNotFoundError(str(exc)) from None
    except ServiceError as exc:
        raise ResourceError(str(exc)) from None
