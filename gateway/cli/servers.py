"""`ledgerflow servers list`: connect to each configured downstream MCP server and show its
state and tools (name, one-line description, required arguments); `--json` for scripts."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
from typing import Any

from gateway.cli.errors import EXIT_FAILED, EXIT_OK, UsageError
from gateway.cli.runtime import add_server_options, server_configs
from gateway.downstream.connection import ServerState
from gateway.downstream.passthrough import exposed_tools
from gateway.downstream.pool import DownstreamServers
from gateway.downstream.program_tools import program_tool_name


def add_commands(commands: Any) -> None:
    group = commands.add_parser("servers", help="the downstream MCP servers programs can call")
    actions = group.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = actions.add_parser(
        "list",
        help="connect to each server and print its state and tools",
        description="Connect to every configured downstream server (ledgerflow.toml's "
        "[servers], --servers FILE, --server) and print each one's state and the tools "
        "programs may call as NAME.TOOL (after its allow- and deny-lists), and whether they are "
        "exposed to MCP clients as NAME__TOOL. Exit 1 if one "
        "cannot be reached.",
    )
    listing.add_argument(
        "--config", metavar="FILE", help="settings file (default: ./ledgerflow.toml)"
    )
    add_server_options(listing)
    listing.add_argument("--json", action="store_true", help="one JSON document instead of text")
    listing.set_defaults(handler=cmd_list)


def cmd_list(args: argparse.Namespace) -> int:
    configs = server_configs(args)
    if not configs:
        raise UsageError("no downstream server is configured ([servers.NAME], --servers, --server)")
    # The listing reports each failure itself; the supervisor's log lines would repeat it.
    logging.getLogger("ledgerflow.downstream").setLevel(logging.ERROR)
    listed = asyncio.run(_list(DownstreamServers(configs)))
    if args.json:
        print(json.dumps(listed, indent=2))
    else:
        for name, server in listed.items():
            print(_headline(name, server))
            for tool in server["tools"]:
                needs = f" ({', '.join(tool['required'])})" if tool["required"] else ""
                print(f"  {tool['name']}{needs}  {tool['description']}".rstrip())
    return EXIT_OK if all(s["state"] == "ready" for s in listed.values()) else EXIT_FAILED


def _headline(name: str, server: dict[str, Any]) -> str:
    if server["state"] != "ready":
        return f"{name} [{server['transport']}]: {server['state']}: {server['error']}"
    headline = f"{name} [{server['transport']}]: ready, {len(server['tools'])} tools"
    if server["expose"]:
        limit = f", {server['rate_limit']} per token" if server["rate_limit"] else ""
        headline += f", exposed to MCP clients as {name}__TOOL{limit}"
    return headline


async def _list(pool: DownstreamServers) -> dict[str, Any]:
    try:
        await asyncio.gather(
            *(server.connect() for server in pool.servers.values()), return_exceptions=True
        )
        states = pool.states()
        for name, server in pool.servers.items():
            ready = server.state is ServerState.READY
            offered = {t.target: t.name for t in exposed_tools(server)} if ready else {}
            states[name]["expose"] = server.config.expose
            states[name]["rate_limit"] = server.config.rate_limit
            states[name]["tools"] = [
                {
                    "name": program_tool_name(name, tool.name),
                    "description": (tool.description or "").strip().split("\n")[0],
                    "required": list((tool.input_schema or {}).get("required", [])),
                    "exposed_as": offered.get(program_tool_name(name, tool.name)),
                }
                for tool in (server.allowed_tools() if ready else [])
            ]
        return states
    finally:
        await pool.close()
