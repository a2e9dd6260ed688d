"""The server's settings, from four layers: defaults < ledgerflow.toml < LEDGERFLOW_* < overrides.

    db = "ledgerflow.db"            # LEDGERFLOW_DB; or "postgresql://app@db-host/ledger"
    transport = "http"              # stdio | http
    port = 8765                     # LEDGERFLOW_PORT
    [tools]                         # LEDGERFLOW_TOOLS__RESERVE_FUNDS=payments:reserve_funds
    reserve_funds = "payments:reserve_funds"
    [circuit]                       # LEDGERFLOW_CIRCUIT__THRESHOLD=3
    threshold = 5

Nested keys are joined with `__` in environment variables; lists and tables given there are
JSON (`LEDGERFLOW_ALLOWED_HOSTS='["example.org:*"]'`). Empty variables are ignored, and so are
`LEDGERFLOW_*` variables that are no setting (LEDGERFLOW_KEK belongs to the vault). Overrides
(from command-line flags) are nested or dotted (`{"circuit.threshold": 3}`); a None value means
"flag not given" and is skipped. Tables merge key by key across layers; lists are replaced.

Every layer is validated on its own first, so that each problem names where it came from:
`ledgerflow.toml: [circuit] threshold: Input should be a valid integer`,
`LEDGERFLOW_PORT: Input should be a valid integer`. All problems are reported at once, and a
value is never echoed (it may be a secret). Relative paths are relative to the working
directory, not to the config file.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)
from pydantic_settings import SettingsError as SourceError

from gateway.downstream.config import ServerName, ServerSettings
from governance.policy import PolicySnapshot
from governance.storage.database_url import DatabaseUrl, DatabaseUrlError
from kernel.errors import LedgerflowError

CONFIG_FILE = "ledgerflow.toml"
ENV_PREFIX = "LEDGERFLOW_"
ENV_NESTED = "__"
LOOPBACK_HOSTS = ["127.0.0.1", "localhost", "[::1]"]

Loc = tuple[str | int, ...]
_TOOL_SPEC = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")


class SettingsError(LedgerflowError, ValueError):
    """Settings that cannot be used; `problems` lists each one, naming its key and source."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems: list[str] = problems if problems is not None else [message]


def _tool_spec(value: str) -> str:
    if not _TOOL_SPEC.fullmatch(value):
        raise ValueError("must be 'module:attribute', for example payments:reserve_funds")
    return value


ToolSpec = Annotated[str, AfterValidator(_tool_spec)]


def _database(value: str) -> str:
    try:
        DatabaseUrl.parse(value)
    except DatabaseUrlError as exc:
        raise ValueError(str(exc)) from None
    return value


DatabaseLocation = Annotated[str, AfterValidator(_database)]
NonEmpty = Annotated[str, Field(min_length=1)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LLMSettings(_Section):
    # "mock" (replies from mock_replies), or a litellm model such as "openai/gpt-4o-mini".
    model: NonEmpty | None = None
    mock_replies: list[str] = []


class ToolPolicy(_Section):
    allow: list[NonEmpty] | None = None  # None: every loaded tool; []: none
    deny: list[NonEmpty] = []  # wins over allow


class PolicySettings(_Section):
    tools: ToolPolicy = ToolPolicy()
    default_max_steps: int = Field(100, ge=1)  # for a program that sets no max_steps
    max_steps_cap: int = Field(1000, ge=1)  # no program may ask for more
    max_tokens_cap: int | None = Field(None, ge=0)
    max_cost_usd_cap: Decimal | None = Field(None, ge=0)
    allowed_models: list[NonEmpty] | None = None  # None: any model

    @model_validator(mode="after")
    def _default_within_cap(self) -> PolicySettings:
        if self.default_max_steps > self.max_steps_cap:
            raise ValueError(
                f"default_max_steps ({self.default_max_steps}) exceeds max_steps_cap "
                f"({self.max_steps_cap})"
            )
        return self

    def snapshot(self, name: str | None = None) -> PolicySnapshot:
        """The governance PolicySnapshot these rules amount to (caps become the limits)."""
        cost = self.max_cost_usd_cap
        return PolicySnapshot(
            name=name,
            tools_allow=None if self.tools.allow is None else tuple(self.tools.allow),
            tools_deny=tuple(self.tools.deny),
            models_allow=None if self.allowed_models is None else tuple(self.allowed_models),
            max_steps=self.max_steps_cap,
            max_tokens=self.max_tokens_cap,
            max_cost_usd=None if cost is None else format(cost, "f"),
        )


class CircuitSettings(_Section):
    threshold: int = Field(5, ge=1)  # consecutive failures that open a tool's circuit
    reset_seconds: float = Field(30.0, gt=0)  # how long it stays open before one trial call


class Settings(BaseSettings):
    """Everything `ledgerflow serve` needs. Build it with `load_settings`."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_NESTED,
        env_ignore_empty=True,
        extra="forbid",
        frozen=True,
    )

    db: DatabaseLocation = "ledgerflow.db"  # a SQLite path, sqlite:///PATH or postgresql://
    transport: Literal["stdio", "http"] = "stdio"
    host: NonEmpty = "127.0.0.1"
    port: int = Field(8765, ge=0, le=65535)  # 0: any free port
    tools: dict[NonEmpty, ToolSpec] = {}
    servers: dict[ServerName, ServerSettings] = {}  # downstream MCP servers, by name
    llm: LLMSettings = LLMSettings()
    webhook_secret: SecretStr | None = None
    auth_required: bool = False  # when not given: true for http, false for stdio
    # Host and Origin headers accepted over HTTP (DNS-rebinding protection); ":*" = any port.
    allowed_hosts: list[NonEmpty] = [h + s for h in LOOPBACK_HOSTS for s in ("", ":*")]
    allowed_origins: list[NonEmpty] = [f"http://{h}{s}" for h in LOOPBACK_HOSTS for s in ("", ":*")]
    policy: PolicySettings = PolicySettings()
    circuit: CircuitSettings = CircuitSettings()
    synchronous: Literal["FULL", "NORMAL"] = "FULL"
    timer_interval_seconds: float = Field(1.0, gt=0)
    # PostgreSQL: how long an instance's runs stay its own without renewal (then another
    # instance takes them over), and how often each instance looks for such runs.
    lease_seconds: float = Field(15.0, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _auth_follows_transport(cls, data: Any) -> Any:
        # Decided on the merged layers, so that transport=http from any layer turns auth on.
        if isinstance(data, dict) and data.get("auth_required") is None:
            return {**data, "auth_required": data.get("transport", "stdio") == "http"}
        return data

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Only the values given: load_settings reads the file and the environment it is handed
        # (never the process's behind its back), one layer at a time.
        return (init_settings,)

    def refuse_unsafe_bind(self) -> None:
        """Raise SettingsError if serving would expose the tools without authentication:
        `host` is not a loopback address and `auth_required` is false. Call before binding."""
        if not self.auth_required and not is_loopback(self.host):
            raise SettingsError(
                f"refusing to listen on {self.host}:{self.port} without authentication: "
                "anyone who can reach it could run and erase. Set auth_required = true (and "
                "create a token), or bind to 127.0.0.1"
            )


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1); false for any other name,
    since a name can resolve anywhere."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def load_settings(
    config_path: str | os.PathLike[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    env: Mapping[str, str] = os.environ,
) -> Settings:
    """Settings from the defaults, the config file (`config_path`, else ./ledgerflow.toml if it
    exists), `env` and `overrides`, later layers winning. Raises SettingsError."""
    layers: list[dict[str, Any]] = []
    problems: list[str] = []
    path = Path(config_path) if config_path is not None else Path(CONFIG_FILE)
    if config_path is not None or path.is_file():
        data = _read_toml(path)
        problems += _check(data, lambda loc: f"{path}: {_toml_key(loc)}")
        layers.append(data)
    data, env_names = _read_env(env)
    problems += _check(data, lambda loc: _env_key(loc, env_names))
    layers.append(data)
    data = _expand(overrides or {})
    problems += _check(data, lambda loc: f"override {_dotted(loc)}")
    layers.append(data)
    if problems:
        raise _error(problems)
    merged: dict[str, Any] = {}
    for layer in layers:
        merged = _merge(merged, layer)
    # Each layer is valid; what remains are rules across layers (a default above a cap).
    problems = _check(merged, lambda loc: f"settings: {_toml_key(loc)}")
    if problems:
        raise _error(problems)
    return Settings.model_validate(merged)


def _error(problems: list[str]) -> SettingsError:
    return SettingsError("\n".join(problems), problems)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as file:
            return tomllib.load(file)
    except FileNotFoundError:
        raise SettingsError(f"{path}: no such file") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"{path}: invalid TOML: {exc}") from None
    except OSError as exc:
        raise SettingsError(f"{path}: cannot read: {exc.strerror or exc}") from None


class _EnvSource(EnvSettingsSource):
    """pydantic-settings' environment parsing, over a mapping given rather than os.environ."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ
        super().__init__(Settings)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return {k.lower(): v for k, v in self._environ.items() if v != ""}


def _read_env(env: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """The LEDGERFLOW_* layer, and the variables' names as given (keyed in lowercase)."""
    names = {k.lower(): k for k in env if k.upper().startswith(ENV_PREFIX) and env[k] != ""}
    try:
        data = _EnvSource({k: env[k] for k in names.values()})()
    except SourceError as exc:
        # Raised for a list or table that is not JSON; its message names the field.
        found = re.search(r'field "(\w+)"', str(exc))
        where = ENV_PREFIX + found.group(1).upper() if found else "environment"
        raise SettingsError(
            f"{where}: not valid JSON (lists and tables are given as JSON, e.g. "
            '\'["a", "b"]\' or \'{"key": "value"}\')'
        ) from None
    return data, names


def _check(data: dict[str, Any], where: Callable[[Loc], str]) -> list[str]:
    try:
        Settings.model_validate(data)
    except ValidationError as exc:
        return [f"{where(e['loc'])}: {_message(e)}" for e in exc.errors()]
    return []


def _message(error: Any) -> str:
    if error["type"] != "extra_forbidden":
        return str(error["msg"]).removeprefix("Value error, ")
    loc = [part for part in error["loc"] if isinstance(part, str)]
    close = difflib.get_close_matches(loc[-1], _keys_at(loc[:-1]), n=1)
    return "unknown key" + (f"; did you mean '{close[0]}'?" if close else "")


def _keys_at(path: list[str]) -> list[str]:
    """The keys of the section at `path` (for suggestions)."""
    if path[:1] == ["servers"]:  # [servers.NAME]: NAME is the user's, its keys are a server's
        return list(ServerSettings.model_fields) if len(path) == 2 else []
    model: type[BaseModel] = Settings
    for part in path:
        field = model.model_fields.get(part)
        section = field.annotation if field is not None else None
        if not (isinstance(section, type) and issubclass(section, BaseModel)):
            return []
        model = section
    return list(model.model_fields)


def _parts(loc: Loc) -> tuple[list[str], str]:
    """`("policy", "tools", "allow", 0)` -> (["policy", "tools"], "allow[0]")."""
    names: list[str] = []
    suffix = ""
    for part in loc:
        if isinstance(part, int):
            suffix += f"[{part}]"
        elif part != "[key]":  # pydantic's marker for a bad dict key
            if names and suffix:
                names[-1] += suffix
                suffix = ""
            names.append(part)
    if not names:
        return [], suffix
    return names[:-1], names[-1] + suffix


def _toml_key(loc: Loc) -> str:
    tables, key = _parts(loc)
    if key and _keys_at([*tables, key]):  # a whole section (a rule across its keys)
        return f"[{'.'.join([*tables, key])}]"
    return f"[{'.'.join(tables)}] {key}" if tables else key or "(top level)"


def _dotted(loc: Loc) -> str:
    tables, key = _parts(loc)
    return ".".join([*tables, key]) if key else "(top level)"


def _env_key(loc: Loc, names: Mapping[str, str]) -> str:
    """The variable that set `loc`: the longest prefix of it that names one."""
    strings = [p for p in loc if isinstance(p, str) and p != "[key]"]
    for size in range(len(strings), 0, -1):
        name = (ENV_PREFIX + ENV_NESTED.join(strings[:size])).lower()
        if name in names:
            rest = _dotted(tuple(strings[size:])) if strings[size:] else ""
            return names[name] + (f": {rest}" if rest else "")
    return "environment: " + _dotted(loc)


def _expand(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Dotted keys into nested tables; None values (flags not given) dropped."""
    nested: dict[str, Any] = {}
    for key, value in overrides.items():
        if value is None:
            continue
        *tables, last = key.split(".")
        target = nested
        for table in tables:
            target = target.setdefault(table, {})
        if isinstance(value, Mapping):
            value = _expand(value)
        target[last] = _merge(target[last], value) if last in target else value
    return nested


def _merge(base: Any, top: Any) -> Any:
    if isinstance(base, dict) and isinstance(top, dict):
        merged = dict(base)
        for key, value in top.items():
            merged[key] = _merge(merged[key], value) if key in merged else value
        return merged
    return top
