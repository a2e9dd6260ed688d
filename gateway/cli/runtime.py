"""What runs the steps of a command's programs: the `--tools`, `--servers`/`--server` and
`--llm-mock` options (defined here once, for every command that runs steps) and the tools,
downstream servers and model of a settings file."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from gateway.cli.errors import UsageError
from gateway.cli.inputs import load_tool_specs
from gateway.downstream.config import (
    ServerConfigError,
    ServerSettings,
    parse_server_flag,
    read_servers_file,
)
from gateway.downstream.connection import DownstreamError
from gateway.downstream.pool import DownstreamServers
from gateway.settings import Settings, SettingsError, load_settings
from gateway.tools.loading import Tool, ToolLoadingError, load_spec
from kernel import LLMAdapter, Program, StepType
from kernel.adapters import MockLLMAdapter
from kernel.capability import SecretResolver

if TYPE_CHECKING:
    from gateway.application.passthrough import ExposedTool
    from gateway.application.service import LedgerflowService


def add_runtime_options(parser: argparse.ArgumentParser, *, llm: bool = True) -> None:
    parser.add_argument(
        "--tools",
        metavar="MODULE:ATTR",
        action="append",
        help="tools the programs may call: a dict (name -> callable) or one callable, imported "
        "from MODULE (the working directory is searched first); repeatable",
    )
    add_server_options(parser)
    if llm:
        parser.add_argument(
            "--llm-mock",
            metavar="REPLY",
            action="append",
            dest="llm_mock",
            help="answer llm steps with REPLY without calling a model; repeat for replies in "
            "call order (a single reply answers every call)",
        )


def add_server_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--servers",
        metavar="FILE",
        dest="servers_file",
        help="downstream MCP servers whose tools programs call as NAME.TOOL: the mcpServers "
        "object of a claude_desktop_config.json-style file (also: [servers.NAME] tables in "
        "ledgerflow.toml)",
    )
    parser.add_argument(
        "--server",
        metavar="NAME=COMMAND",
        action="append",
        dest="server_specs",
        help="one downstream MCP server: NAME=COMMAND [ARGS...] (stdio) or NAME=URL "
        "(Streamable HTTP); repeatable",
    )


class Runtime:
    """The tools and the LLM the command line gave, and hints at the flag a program lacks."""

    def __init__(
        self,
        args: argparse.Namespace,
        *,
        quiet_imports: bool = False,
        settings: Settings | None = None,
    ) -> None:
        if quiet_imports:  # serving on stdio: a tool module printing at import
            with contextlib.redirect_stdout(sys.stderr):
                self.tools: dict[str, Tool] = load_tool_specs(args.tools) or {}
        else:
            self.tools = load_tool_specs(args.tools) or {}
        replies: list[str] | None = getattr(args, "llm_mock", None)
        self.llm: LLMAdapter | None = mock_llm(replies) if replies else None
        self.server_configs = server_configs(args, settings)

    @asynccontextmanager
    async def downstream(
        self,
        register: Callable[[dict[str, Tool]], None],
        *,
        vault: SecretResolver | None = None,
        program: Program | None = None,
        expose: Callable[[str, list[ExposedTool]], None] | None = None,
        guard: Callable[[str, Any], Any] | None = None,
    ) -> AsyncIterator[DownstreamServers]:
        """The downstream servers connected (those `program` calls, or all), their tools handed
        to `register` (and the tools they offer to MCP clients to `expose`, their calls
        through `guard`) now and whenever a server's list changes; closed on exit."""
        servers = DownstreamServers(self.server_configs, vault=vault)
        servers.on_exposed, servers.guard = expose, guard

        # A Python tool keeps its name; the clash is refused at start (below).
        servers.on_tools = lambda tools: register(
            {name: fn for name, fn in tools.items() if name not in self.tools}
        )
        try:
            names = None if program is None else servers.used_by(_tool_names(program))
            try:
                for problem in await servers.connect(names):
                    print(f"warning: {problem} (continuing without it)", file=sys.stderr)
            except DownstreamError as exc:
                raise UsageError(str(exc)) from None
            clash = sorted(servers.tools().keys() & self.tools.keys())
            if clash:
                raise UsageError(
                    f"tool '{clash[0]}' is both a --tools tool and a downstream server's tool; "
                    "rename the Python tool"
                )
            yield servers
        finally:
            await servers.close()

    @asynccontextmanager
    async def attached(
        self,
        service: LedgerflowService,
        program: Program | None = None,
        wrap: Callable[[str, Tool], Tool] | None = None,
    ) -> AsyncIterator[DownstreamServers]:
        """`downstream`, with the tools registered in the service's VM (through `wrap`, the
        circuit breakers of a server, when given)."""

        def register(tools: dict[str, Tool]) -> None:
            for name, fn in tools.items():
                service.vm.register_tool(name, fn if wrap is None else wrap(name, fn))

        async with self.downstream(
            register,
            vault=service.workspace.vault,
            program=program,
            expose=service.exposed.replace,
            guard=wrap,
        ) as servers:
            yield servers

    def hints(self, program: Program, known: Iterable[str] = ()) -> list[str]:
        steps = list(program.all_steps())
        hints = []
        registered = self.tools.keys() | set(known)
        missing = sorted({s.tool for s in steps if s.tool is not None and s.tool not in registered})
        # SERVER.TOOL names: a server that is not configured gets a hint; a configured one
        # that lacks the tool is the validator's error (with its did-you-mean).
        servers = {name.partition(".")[0] for name in missing if "." in name}
        unknown = sorted(servers - self.server_configs.keys())
        if unknown:
            hints.append(
                f"configure the MCP server {', '.join(unknown)} ([servers.NAME] in "
                "ledgerflow.toml, --servers FILE or --server NAME=COMMAND)"
            )
        missing = [name for name in missing if "." not in name]
        if missing:
            hints.append(f"register {', '.join(missing)} with --tools MODULE:ATTR")
        if self.llm is None and any(s.type is StepType.LLM for s in steps):
            hints.append("answer llm steps with --llm-mock REPLY")
        return hints


def _tool_names(program: Program) -> list[str]:
    return [step.tool for step in program.all_steps() if step.tool is not None]


def server_configs(
    args: argparse.Namespace, settings: Settings | None = None
) -> dict[str, ServerSettings]:
    """The downstream servers of the settings file, `--servers FILE` and `--server`; a name
    given twice is an error naming both places."""
    found: dict[str, ServerSettings] = {}
    origin: dict[str, str] = {}

    def add(servers: Mapping[str, ServerSettings], where: str) -> None:
        for name, config in servers.items():
            if name in found:
                twice = f"in {origin[name]} and {where}"
                raise UsageError(f"server '{name}' is configured twice: {twice}")
            found[name], origin[name] = config, where

    try:
        if settings is None:
            settings = load_settings(getattr(args, "config", None))
        add(settings.servers, "the settings ([servers])")
        servers_file = getattr(args, "servers_file", None)
        if servers_file is not None:
            add(read_servers_file(servers_file), servers_file)
        for spec in getattr(args, "server_specs", None) or []:
            name, config = parse_server_flag(spec)
            add({name: config}, "--server")
    except (SettingsError, ServerConfigError) as exc:
        raise UsageError(str(exc)) from None
    return found


def mock_llm(replies: list[str]) -> MockLLMAdapter:
    return MockLLMAdapter(replies[0] if len(replies) == 1 else replies)


def settings_tools(settings: Settings) -> dict[str, Tool]:
    """`[tools] name = "module:attr"`: each spec must name exactly one callable."""
    tools: dict[str, Tool] = {}
    for name, spec in settings.tools.items():
        try:
            loaded = load_spec(spec)
        except ToolLoadingError as exc:
            raise UsageError(f"[tools] {name}: {exc}") from None
        if len(loaded) != 1:
            raise UsageError(f"[tools] {name}: '{spec}' names {len(loaded)} tools, not one")
        tools[name] = next(iter(loaded.values()))
    return tools


def settings_llm(settings: Settings) -> LLMAdapter | None:
    model, replies = settings.llm.model, settings.llm.mock_replies
    if model is None:
        return None
    if model != "mock":
        try:
            from kernel.adapters import LiteLLMAdapter

            return LiteLLMAdapter(model)
        except ImportError as exc:
            raise UsageError(f"llm.model '{model}': {exc}") from None
    if not replies:
        raise UsageError("llm.model = 'mock' needs llm.mock_replies")
    return mock_llm(replies)
