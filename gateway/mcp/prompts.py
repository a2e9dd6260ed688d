"""The MCP prompt `write_program`: the DSL guide, and the tools this server can call.

No `from __future__ import annotations` here: the SDK evaluates the prompt's annotations.
"""

from typing import Annotated, Any

from mcp.server.mcpserver import MCPServer
from pydantic import Field

from gateway.application.service import LedgerflowService
from gateway.mcp.dsl_guide import DSL_GUIDE


def register(server: MCPServer[Any], service: LedgerflowService) -> None:
    @server.prompt(title="Write a ledgerflow program")
    def write_program(
        task: Annotated[str, Field(description="What the program should do")] = "",
    ) -> str:
        """How to write a ledgerflow program: steps, fields, branches, references, expressions."""
        tools = ", ".join(service.tool_names) or "(none registered)"
        ask = f"\n\nWrite a program for this task:\n{task}" if task.strip() else ""
        return f"{DSL_GUIDE}\nTools this server can call: {tools}.{ask}"
