"""Circuit breakers: stop calling a tool that keeps failing, and try it again later.

Per tool: CLOSED (calls pass) -> OPEN after `threshold` consecutive failures (calls fail fast
with CircuitOpenError for `reset_seconds`) -> HALF_OPEN (exactly one trial call passes; the
others still fail fast) -> CLOSED if the trial succeeds, OPEN again (for another
`reset_seconds`) if it fails.

A failure is an exception raised by the tool (or by the awaitable a sync tool returns). A
cancellation (a step timeout, a shutdown) gives no verdict: the trial slot is released and the
failure count is untouched, because an interrupted call says nothing about the tool. Time comes
from the kernel Clock port, so tests drive the breaker with a ManualClock.

`wrap` keeps what the VM reads from a tool: sync stays sync, async stays async, the signature
(for keyword injection, `ctx`, `idempotency_key`) and the `@reads_secrets` marker.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypedDict, cast

from kernel.clock import Clock
from kernel.errors import LedgerflowError
from kernel.tools import Tool, bind_tool, reads_secrets


class CircuitState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitOpenError(LedgerflowError, RuntimeError):
    """A call refused without reaching the tool, because its circuit is open."""

    def __init__(self, message: str, *, tool: str, retry_after: float) -> None:
        super().__init__(message)
        self.tool = tool
        self.retry_after = retry_after


class BreakerState(TypedDict):
    state: str
    failures: int
    opened_at: float | None


@dataclass(slots=True)
class _Breaker:
    name: str
    failures: int = 0
    opened_at: float | None = None
    trial_running: bool = False


class CircuitBreakers:
    """One breaker per tool name, created on first use; safe across threads (sync tools with a
    timeout run in worker threads)."""

    def __init__(self, threshold: int = 5, reset_seconds: float = 30.0, *, clock: Clock) -> None:
        if threshold < 1:
            raise ValueError(f"circuit threshold must be at least 1, got {threshold}")
        if not reset_seconds > 0:
            raise ValueError(f"circuit reset_seconds must be positive, got {reset_seconds}")
        self.threshold = threshold
        self.reset_seconds = reset_seconds
        self.clock = clock
        self._breakers: dict[str, _Breaker] = {}
        self._lock = threading.Lock()

    def wrap(self, name: str, fn: Tool) -> Tool:
        """`fn` behind the breaker named `name`."""
        # bind_tool decides sync/async and reads the secrets marker exactly as the VM will.
        bound = bind_tool(name, fn)
        wrapper: Tool
        if bound.is_async:

            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                self._admit(name)
                return await self._settle(name, lambda: fn(*args, **kwargs))

            wrapper = async_wrapper
        else:

            def sync_wrapper(*args: Any, **kwargs: Any) -> Any:
                self._admit(name)
                try:
                    result = fn(*args, **kwargs)
                except Exception:
                    self._failed(name)
                    raise
                except BaseException:
                    self._no_verdict(name)
                    raise
                if inspect.isawaitable(result):  # the VM awaits it: judge its outcome
                    return self._settle(name, lambda: result)
                self._succeeded(name)
                return result

            wrapper = sync_wrapper
        functools.update_wrapper(wrapper, fn)
        # Without a signature (some builtins) the VM passes any keyword, as it would to fn.
        with contextlib.suppress(TypeError, ValueError):
            cast(Any, wrapper).__signature__ = inspect.signature(fn)
        return reads_secrets(wrapper) if bound.reads_secrets else wrapper

    def wrap_all(self, tools: dict[str, Tool]) -> dict[str, Tool]:
        return {name: self.wrap(name, fn) for name, fn in tools.items()}

    def states(self) -> dict[str, BreakerState]:
        """Every breaker's state as a caller would meet it now (for /readyz)."""
        with self._lock:
            now = self.clock.now()
            return {
                name: {
                    "state": self._state(b, now).value,
                    "failures": b.failures,
                    "opened_at": b.opened_at,
                }
                for name, b in sorted(self._breakers.items())
            }

    def _state(self, breaker: _Breaker, now: float) -> CircuitState:
        if breaker.opened_at is None:
            return CircuitState.CLOSED
        if breaker.trial_running or now - breaker.opened_at >= self.reset_seconds:
            return CircuitState.HALF_OPEN
        return CircuitState.OPEN

    def _admit(self, name: str) -> None:
        """Let a call through, or raise CircuitOpenError."""
        with self._lock:
            breaker = self._breakers.setdefault(name, _Breaker(name))
            if breaker.opened_at is None:
                return
            now = self.clock.now()
            if self._state(breaker, now) is CircuitState.HALF_OPEN and not breaker.trial_running:
                breaker.trial_running = True
                return
            failures = breaker.failures
            if breaker.trial_running:
                wait = "the trial call in progress finishes"
                retry_after = 0.0
            else:
                retry_after = breaker.opened_at + self.reset_seconds - now
                wait = f"{math.ceil(retry_after)}s"
        raise CircuitOpenError(
            f"tool '{name}' is unavailable: circuit open after {failures} consecutive "
            f"failures; retry after {wait}",
            tool=name,
            retry_after=retry_after,
        )

    async def _settle(self, name: str, call: Callable[[], Awaitable[Any]]) -> Any:
        try:
            result = await call()
        except Exception:
            self._failed(name)
            raise
        except BaseException:
            self._no_verdict(name)
            raise
        self._succeeded(name)
        return result

    def _succeeded(self, name: str) -> None:
        with self._lock:
            breaker = self._breakers[name]
            breaker.failures, breaker.opened_at, breaker.trial_running = 0, None, False

    def _failed(self, name: str) -> None:
        with self._lock:
            breaker = self._breakers[name]
            breaker.failures += 1
            if breaker.trial_running or breaker.failures >= self.threshold:
                # Re-opening restarts the wait from now, not from the first opening.
                breaker.opened_at = self.clock.now()
            breaker.trial_running = False

    def _no_verdict(self, name: str) -> None:
        with self._lock:
            self._breakers[name].trial_running = False
