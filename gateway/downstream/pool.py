"""Every configured downstream server, connected together and closed together."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from gateway.application.passthrough import ExposedTool
from gateway.downstream.config import ServerSettings
from gateway.downstream.connection import DownstreamError, DownstreamServer, ServerState
from gateway.downstream.passthrough import Guard, exposed_tools
from gateway.downstream.program_tools import SEPARATOR, program_tools
from kernel.capability import SecretResolver
from kernel.tools import Tool


class DownstreamServers:
    def __init__(
        self,
        configs: Mapping[str, ServerSettings],
        *,
        environ: Mapping[str, str] | None = None,
        vault: SecretResolver | None = None,
    ) -> None:
        # Called with a server's program tools each time it (re)connects or relists them.
        self.on_tools: Callable[[dict[str, Tool]], None] | None = None
        # Called then with the server's name and the tools it offers to MCP clients (expose),
        # each call passing through `guard` (the circuit breakers) when one is set.
        self.on_exposed: Callable[[str, list[ExposedTool]], None] | None = None
        self.guard: Guard | None = None
        self.servers = {
            name: DownstreamServer(
                name, config, environ=environ, vault=vault, on_tools_changed=self._changed
            )
            for name, config in configs.items()
        }

    def _changed(self, server: DownstreamServer) -> None:
        if self.on_tools is not None:
            self.on_tools(program_tools(server))
        if self.on_exposed is not None:
            self.on_exposed(server.name, exposed_tools(server, self.guard))

    def __bool__(self) -> bool:
        return bool(self.servers)

    def used_by(self, tool_names: Iterable[str]) -> list[str]:
        """The servers that tool names such as `files.read_file` point at."""
        wanted = {name.partition(SEPARATOR)[0] for name in tool_names if SEPARATOR in name}
        return sorted(wanted & self.servers.keys())

    async def connect(self, names: Iterable[str] | None = None) -> list[str]:
        """Connect `names` (default: all) in parallel, each within its connect timeout. Raises
        DownstreamError if a required one (or any named one) fails; returns the problems of
        optional servers left down (the rest keep reconnecting in the background)."""
        chosen = list(self.servers) if names is None else list(names)
        must = set(chosen) if names is not None else None
        results = await asyncio.gather(
            *(self.servers[name].connect() for name in chosen), return_exceptions=True
        )
        problems = []
        for name, result in zip(chosen, results, strict=True):
            if isinstance(result, DownstreamError):
                required = self.servers[name].config.required if must is None else True
                if required:
                    raise result
                problems.append(str(result))
            elif isinstance(result, BaseException):
                raise result
        return problems

    def tools(self) -> dict[str, Tool]:
        """The program tools of every connected server, by `SERVER.TOOL`."""
        tools: dict[str, Tool] = {}
        for server in self.servers.values():
            tools |= program_tools(server)
        return tools

    def states(self) -> dict[str, dict[str, Any]]:
        """Each server's state (for /readyz and `servers list`)."""
        return {
            name: {
                "state": server.state.value,
                "transport": server.config.transport,
                "required": server.config.required,
                "error": server.last_error,
                "tools": len(server.tools) if server.state is ServerState.READY else None,
            }
            for name, server in sorted(self.servers.items())
        }

    async def close(self) -> None:
        await asyncio.gather(*(server.close() for server in self.servers.values()))
