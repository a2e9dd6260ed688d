"""The MCP tools on saved programs: save_program, validate_program, get_program,
list_programs, delete_program.

No `from __future__ import annotations` here: the SDK evaluates the tools' annotations.
"""

from typing import Annotated, Any

from mcp.server.mcpserver import Context, MCPServer
from pydantic import Field

from gateway.application.service import LedgerflowService
from gateway.mcp.arguments import DESTROY, READ, WRITE, Name, ProgramArg, ProgramObject
from gateway.mcp.calls import PrincipalResolver, registrar, tool_call
from gateway.mcp.models import ProgramList, ProgramVersion, ProgramView, ValidationResult


def register(server: MCPServer[Any], service: LedgerflowService, who: PrincipalResolver) -> None:
    tool = registrar(server)

    @tool("Save a program", WRITE.model_copy(update={"idempotent_hint": True}))
    async def save_program(
        program: Annotated[ProgramObject, Field(description="The program (a JSON object)")],
        ctx: Context[Any, Any],
        name: Annotated[
            str | None, Field(description="Save under this name (default: the program's name)")
        ] = None,
    ) -> ProgramView:
        """Save a program as the next version of its name (saving an unchanged program again
        returns the existing version). Run it later by name."""
        return ProgramView.of(await tool_call(service.save_program(who(ctx), program, name)))

    @tool("Check a program", READ)
    async def validate_program(program: ProgramArg, ctx: Context[Any, Any]) -> ValidationResult:
        """Report every problem that would stop a program running here, without running it."""
        return ValidationResult.of(await tool_call(service.validate_program(who(ctx), program)))

    @tool("Read a saved program", READ)
    async def get_program(
        name: Name,
        ctx: Context[Any, Any],
        version: Annotated[int | None, Field(ge=1, description="Default: the latest")] = None,
    ) -> ProgramVersion:
        """A saved program's body and version."""
        saved = await tool_call(service.get_program(who(ctx), name, version))
        return ProgramVersion(**ProgramView.of(saved).model_dump(), program=saved.body)

    @tool("List saved programs", READ)
    async def list_programs(ctx: Context[Any, Any]) -> ProgramList:
        """The latest version of every saved program; deleted ones are flagged retired."""
        saved = await tool_call(service.list_programs(who(ctx)))
        return ProgramList(programs=[ProgramView.of(s) for s in saved])

    @tool("Delete a saved program", DESTROY)
    async def delete_program(name: Name, ctx: Context[Any, Any]) -> ProgramView:
        """Retire a saved program: no new runs by its name. Its versions, runs, traces and
        envelopes stay."""
        return ProgramView.of(await tool_call(service.delete_program(who(ctx), name)))
