"""How a downstream MCP server is configured: the shape of Claude Desktop's `mcpServers`
entries (so users can copy theirs), plus what a gateway needs (allow-list, timeout, ...).

    [servers.files]                       # stdio: ledgerflow starts the process
    command = "npx"
    args = ["-y", "@modelcontextprotocol/server-filesystem", "/srv/data"]
    env = { API_KEY = "${FILES_API_KEY}" }
    tools = ["read_*", "list_directory"]  # glob patterns; default: every tool
    deny = ["write_*"]
    timeout_seconds = 30
    required = true                       # serve refuses to start without it
    expose = true                         # also offered to MCP clients as files__read_file
    rate_limit = "60/min"                 # per token, for those pass-through calls

    [servers.payments]                    # Streamable HTTP
    url = "https://payments.internal/mcp"
    headers = { Authorization = "Bearer vault://secret/3f2a..." }
"""

from __future__ import annotations

import difflib
import fnmatch
import json
import re
import shlex
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from gateway.application.passthrough import RateLimit
from kernel.errors import LedgerflowError

# A server's name prefixes its tools (`files.read_file`), so it holds no dot.
SERVER_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")
_HTTP_ONLY = ("headers",)
_STDIO_ONLY = ("args", "env", "cwd")


class ServerConfigError(LedgerflowError, ValueError):
    """A server configuration that cannot be used; the message names the server and the key."""


def server_name(value: str) -> str:
    if not SERVER_NAME.fullmatch(value):
        raise ValueError(
            f"server name '{value}' must start with a letter and hold only letters, digits, "
            "'_' and '-' (it prefixes the tools: NAME.TOOL)"
        )
    return value


ServerName = Annotated[str, AfterValidator(server_name)]


def _rate_limit(value: str) -> str:
    RateLimit.parse(value)  # its RateLimitError is a ValueError: pydantic reports it
    return value


class ServerSettings(BaseModel):
    """One `[servers.NAME]` table. Exactly one of `command` (stdio) and `url` (HTTP)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    command: Annotated[str, Field(min_length=1)] | None = None
    args: list[str] = []
    env: dict[str, str] = {}
    cwd: str | None = None
    url: Annotated[str, Field(min_length=1)] | None = None
    headers: dict[str, str] = {}
    # Claude Desktop's optional transport tag; checked against command/url when given.
    type: Literal["stdio", "http", "streamable-http", "streamable_http"] | None = None
    disabled: bool = False
    tools: list[Annotated[str, Field(min_length=1)]] | None = None  # None: every tool
    deny: list[Annotated[str, Field(min_length=1)]] = []  # wins over tools
    timeout_seconds: float = Field(30.0, gt=0)
    connect_timeout_seconds: float = Field(10.0, gt=0)
    expose: bool = False
    rate_limit: Annotated[str, AfterValidator(_rate_limit)] | None = None  # pass-through
    required: bool = False

    @model_validator(mode="after")
    def _one_transport(self) -> ServerSettings:
        if (self.command is None) == (self.url is None):
            raise ValueError("give either command (a stdio server) or url (an HTTP server)")
        given = self.model_fields_set
        if self.url is not None:
            wrong = [key for key in _STDIO_ONLY if key in given]
            if wrong:
                raise ValueError(f"{wrong[0]} is for a stdio server (command); this one has url")
            if not re.match(r"https?://", self.url):
                raise ValueError("url must start with http:// or https://")
            if self.type == "stdio":
                raise ValueError("type 'stdio' needs command, not url")
        else:
            wrong = [key for key in _HTTP_ONLY if key in given]
            if wrong:
                raise ValueError(f"{wrong[0]} is for an HTTP server (url); this one has command")
            if self.type not in (None, "stdio"):
                raise ValueError(f"type '{self.type}' needs url, not command")
        return self

    @property
    def rate(self) -> RateLimit | None:
        return None if self.rate_limit is None else RateLimit.parse(self.rate_limit)

    @property
    def transport(self) -> Literal["stdio", "http"]:
        return "stdio" if self.command is not None else "http"

    def allows(self, tool: str) -> bool:
        """Whether the allow-list lets `tool` through and no deny pattern stops it."""
        if any(fnmatch.fnmatchcase(tool, pattern) for pattern in self.deny):
            return False
        return self.tools is None or any(fnmatch.fnmatchcase(tool, p) for p in self.tools)


def parse_server(name: str, data: Any, where: str) -> ServerSettings:
    """One server's table; every problem is one line naming `where`, the server and the key."""
    try:
        server_name(name)
        return ServerSettings.model_validate(data)
    except ValueError as exc:  # ValidationError is one
        raise ServerConfigError(_describe(exc, f"{where}: server '{name}'")) from None


def _describe(exc: ValueError, where: str) -> str:
    if not isinstance(exc, ValidationError):
        return f"{where}: {exc}"
    lines = []
    for error in exc.errors():
        keys = [str(p) for p in error["loc"]]
        if error["type"] == "extra_forbidden":
            close = difflib.get_close_matches(keys[-1], list(ServerSettings.model_fields), n=1)
            message = "unknown key" + (f"; did you mean '{close[0]}'?" if close else "")
        else:
            message = str(error["msg"]).removeprefix("Value error, ")
        at = f" {'.'.join(keys)}" if keys else ""
        lines.append(f"{where}{at}: {message}")
    return "\n".join(lines)


def read_servers_file(path: str) -> dict[str, ServerSettings]:
    """The `mcpServers` object of a claude_desktop_config.json-style file (disabled ones left
    out)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ServerConfigError(f"--servers {path}: no such file") from None
    except OSError as exc:
        raise ServerConfigError(f"--servers {path}: cannot read: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise ServerConfigError(f"--servers {path}: not valid JSON: {exc}") from None
    servers = data.get("mcpServers") if isinstance(data, dict) else None
    if not isinstance(servers, dict):
        raise ServerConfigError(
            f"--servers {path}: expected an object with an 'mcpServers' object, as in "
            "claude_desktop_config.json"
        )
    parsed = {name: parse_server(name, entry, path) for name, entry in servers.items()}
    return {name: server for name, server in parsed.items() if not server.disabled}


def parse_server_flag(spec: str) -> tuple[str, ServerSettings]:
    """`--server NAME=COMMAND ARGS...` (a stdio server) or `--server NAME=https://.../mcp`."""
    name, sep, rest = spec.partition("=")
    if not sep or not name or not rest.strip():
        raise ServerConfigError(
            f"--server '{spec}' must be NAME=COMMAND [ARGS...] or NAME=URL "
            "(for example files=npx -y @modelcontextprotocol/server-filesystem /tmp)"
        )
    rest = rest.strip()
    if re.match(r"https?://", rest):
        return name, parse_server(name, {"url": rest}, "--server")
    try:
        words = shlex.split(rest)
    except ValueError as exc:
        raise ServerConfigError(f"--server '{name}': cannot split the command: {exc}") from None
    return name, parse_server(name, {"command": words[0], "args": words[1:]}, "--server")
