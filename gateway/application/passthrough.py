"""Pass-through: downstream tools offered to the gateway's own MCP clients, protocol-free.

A downstream server configured with `expose = true` contributes `ExposedTool`s (built by
gateway.downstream.passthrough); `LedgerflowService.call_tool` authorizes and records each call.
This module holds what the service needs to know about them: their names, how to call one, its
rate limit, and the registry that tells listeners (the MCP server) when the list changes.
"""

from __future__ import annotations

import collections
import math
import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from kernel.errors import LedgerflowError

EXPOSED_SEPARATOR = "__"  # exposed tools are SERVER__TOOL (names valid for Claude Desktop)
# How a tool's progress reaches the caller: (progress, total, message).
ProgressSink = Callable[[float, float | None, str | None], Awaitable[None]]
_RATE = re.compile(r"\s*(\d+)\s*/\s*(\d*)\s*([a-z]+)\s*")
_PER_SECONDS = {
    "s": 1, "sec": 1, "second": 1,
    "m": 60, "min": 60, "minute": 60,
    "h": 3600, "hour": 3600,
    "d": 86400, "day": 86400,
}  # fmt: skip


class RateLimitError(LedgerflowError, ValueError):
    """A rate limit that cannot be parsed."""


@dataclass(frozen=True, slots=True)
class RateLimit:
    """At most `calls` calls in any window of `seconds` (a sliding window)."""

    calls: int
    seconds: float
    text: str

    @classmethod
    def parse(cls, text: str) -> RateLimit:
        """`"60/min"`, `"10/s"`, `"1000/hour"`, `"5/10s"` (five per ten seconds)."""
        match = _RATE.fullmatch(text.lower())
        unit = None
        if match is not None:  # a plural is the same unit: "mins", "hours"
            name = match.group(3)
            unit = _PER_SECONDS.get(name) or _PER_SECONDS.get(name.removesuffix("s"))
        if match is None or unit is None or int(match.group(1)) < 1:
            raise RateLimitError(
                f"rate limit {text!r}: expected CALLS/PERIOD such as '60/min', '10/s', "
                "'1000/hour' or '5/10s'"
            )
        multiple = int(match.group(2)) if match.group(2) else 1
        if multiple < 1:
            raise RateLimitError(f"rate limit {text!r}: the period must be positive")
        return cls(int(match.group(1)), float(unit * multiple), text.strip())


class RateLimiter:
    """Sliding-window counters, one per key (a token and a server)."""

    def __init__(self) -> None:
        self._calls: dict[tuple[str, str], collections.deque[float]] = {}

    def admit(self, key: tuple[str, str], limit: RateLimit, now: float) -> float | None:
        """Count a call and return None, or return the seconds until one would be admitted."""
        calls = self._calls.setdefault(key, collections.deque())
        while calls and calls[0] <= now - limit.seconds:
            calls.popleft()
        if len(calls) >= limit.calls:
            return max(calls[0] + limit.seconds - now, 0.0)
        calls.append(now)
        return None


@dataclass(frozen=True, slots=True)
class Answer:
    """What a downstream tool answered: `output` for the ledger (as a program step's output
    would be), `result` for the caller (the protocol's result, passed on as it is)."""

    output: Any
    result: Any
    is_error: bool
    error: str | None = None


class FailedAnswer(LedgerflowError):
    """Raised by a call whose tool answered with an error, so that a circuit breaker wrapped
    around the call counts it; the service turns it back into its answer."""

    def __init__(self, answer: Answer) -> None:
        super().__init__(answer.error or "the tool reported an error")
        self.answer = answer


@dataclass(frozen=True, slots=True)
class ExposedTool:
    """One downstream tool offered as `name` (SERVER__TOOL) to the gateway's MCP clients."""

    name: str
    target: str  # SERVER.TOOL: the name the policy, token allow-lists and breakers use
    server: str
    description: str
    input_schema: dict[str, Any]
    call: Callable[[dict[str, Any], ProgressSink | None], Awaitable[Answer]]
    rate_limit: RateLimit | None = None
    title: str | None = None
    output_schema: dict[str, Any] | None = None
    annotations: dict[str, Any] | None = None  # the downstream hints (readOnlyHint, ...)


class ExposedTools:
    """The exposed tools of every server, replaced server by server as their lists change."""

    def __init__(self) -> None:
        self._by_server: dict[str, dict[str, ExposedTool]] = {}
        self._listeners: list[Callable[[], None]] = []

    def replace(self, server: str, tools: Iterable[ExposedTool]) -> None:
        """`server`'s tools are now `tools`; listeners hear of it if anything changed."""
        new = {tool.name: tool for tool in tools}
        old = self._by_server.get(server, {})
        self._by_server[server] = new
        if _shape(old) != _shape(new):
            for listener in list(self._listeners):
                listener()

    def on_change(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def get(self, name: str) -> ExposedTool | None:
        return next((t[name] for t in self._by_server.values() if name in t), None)

    def all(self) -> list[ExposedTool]:
        return sorted((t for ts in self._by_server.values() for t in ts.values()), key=_name)

    def names(self) -> list[str]:
        return [tool.name for tool in self.all()]


def _name(tool: ExposedTool) -> str:
    return tool.name


def _shape(tools: dict[str, ExposedTool]) -> list[str]:
    return sorted(
        repr((t.name, t.title, t.description, t.input_schema, t.output_schema, t.annotations))
        for t in tools.values()
    )


def retry_text(seconds: float) -> str:
    return f"{math.ceil(seconds * 10) / 10:g} s"
