"""One downstream MCP server: a session kept alive by a supervisor task.

The SDK's client is entered and left in one task (its transports hold task groups), so each
server has a supervisor that connects, lists the tools, publishes the session and waits until
the session breaks or the server is closed; then it reconnects with exponential backoff
(0.25 s doubling to 30 s). A call waits for the session at most its own timeout, so a server
that is down or hung fails the step instead of hanging the run.

A session is broken when its transport reaches end of stream (the process died, the HTTP
connection dropped) or a call meets a closed connection. A timed-out call is abandoned (the SDK
sends `notifications/cancelled`) without breaking the session: one slow tool says nothing
about the server.

A stdio server's stderr goes to our log, one line at a time, prefixed with the server's name and
scrubbed of the secrets its environment was given.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from enum import StrEnum
from typing import Any, TextIO, cast

from mcp import Client, MCPError, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.client.subscriptions import ListenNotSupportedError
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.types import CallToolResult, ListToolsResult, Tool

from gateway.application.passthrough import ProgressSink
from gateway.downstream.config import ServerSettings
from gateway.downstream.values import resolve_values, scrub
from kernel.capability import SecretResolver
from kernel.errors import LedgerflowError

logger = logging.getLogger("ledgerflow.downstream")

BACKOFF_START_SECONDS = 0.25
BACKOFF_MAX_SECONDS = 30.0
CONNECTION_CLOSED = -32000  # the SDK's code for a transport that closed


class ServerState(StrEnum):
    IDLE = "idle"  # not started
    CONNECTING = "connecting"
    READY = "ready"
    DOWN = "down"  # the last attempt failed or the session broke; reconnecting
    CLOSED = "closed"


class DownstreamError(LedgerflowError, RuntimeError):
    """A downstream call or connection that failed; the message names the server."""


class DownstreamServer:
    def __init__(
        self,
        name: str,
        config: ServerSettings,
        *,
        environ: Mapping[str, str] | None = None,
        vault: SecretResolver | None = None,
        on_tools_changed: Callable[[DownstreamServer], None] | None = None,
    ) -> None:
        self.name = name
        self.config = config
        self.state = ServerState.IDLE
        self.last_error: str | None = None
        self.tools: list[Tool] = []
        self._environ = os.environ if environ is None else environ
        self._vault = vault
        self._on_tools_changed = on_tools_changed
        self._secrets: list[str] = []
        self._client: Client | None = None
        self._ready = asyncio.Event()
        self._broken = asyncio.Event()
        self._closing = asyncio.Event()
        self._attempted = asyncio.Event()  # set after each connection attempt, good or bad
        self._supervisor: asyncio.Task[None] | None = None

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Begin connecting (idempotent); `connect` waits for the first attempt."""
        if self._supervisor is None and not self._closing.is_set():
            self._supervisor = asyncio.create_task(self._supervise(), name=f"mcp:{self.name}")

    async def connect(self, within: float | None = None) -> None:
        """Start and wait for the first attempt; DownstreamError naming why if it failed."""
        self.start()
        limit = self.config.connect_timeout_seconds if within is None else within
        try:
            async with asyncio.timeout(limit):
                while not self._ready.is_set():
                    self._attempted.clear()
                    await self._attempted.wait()
                    if not self._ready.is_set():
                        break
        except TimeoutError:
            self.last_error = f"no answer within {limit:g} s"
        if not self._ready.is_set():
            raise DownstreamError(f"server '{self.name}': cannot connect: {self.last_error}")

    async def close(self) -> None:
        """End the session (and the subprocess); later calls fail."""
        self._closing.set()
        self._broken.set()
        task, self._supervisor = self._supervisor, None
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.state = ServerState.CLOSED

    def allowed_tools(self) -> list[Tool]:
        """The listed tools that the allow-list lets through and no deny pattern stops."""
        return [tool for tool in self.tools if self.config.allows(tool.name)]

    # --- calls -------------------------------------------------------------------------------

    async def call(
        self,
        tool: str,
        arguments: dict[str, Any],
        *,
        within: float | None = None,
        meta: Mapping[str, Any] | None = None,
        progress: ProgressSink | None = None,
    ) -> CallToolResult:
        """Call `tool` within `within` seconds (default: timeout_seconds), waiting for the
        session if it is (re)connecting; the tool's progress notifications go to `progress`.
        DownstreamError for anything but a tool's own result."""
        limit = self.config.timeout_seconds if within is None else within
        self.start()
        try:
            async with asyncio.timeout(limit):
                client = await self._session()
                try:
                    return await client.call_tool(
                        tool,
                        arguments,
                        progress_callback=cast(Any, progress),
                        meta=cast(Any, meta),
                    )
                except MCPError as exc:
                    if exc.error.code == CONNECTION_CLOSED:
                        self._break()
                        raise DownstreamError(
                            f"server '{self.name}' closed the connection during '{tool}'"
                        ) from None
                    raise DownstreamError(
                        f"server '{self.name}' refused '{tool}': {self._clean(exc.error.message)}"
                    ) from None
                except (OSError, ConnectionError) as exc:
                    self._break()
                    raise DownstreamError(
                        f"server '{self.name}': connection lost during '{tool}': "
                        f"{self._clean(str(exc))}"
                    ) from None
        except TimeoutError:
            why = "" if self._ready.is_set() else f" (not connected: {self.last_error})"
            raise DownstreamError(
                f"server '{self.name}': '{tool}' did not answer within {limit:g} s{why}"
            ) from None

    def _break(self) -> None:
        """The session is unusable: calls wait for the next one from now on."""
        self._ready.clear()
        self._broken.set()

    async def _session(self) -> Client:
        while True:
            client = self._client
            if client is not None and self._ready.is_set():
                return client
            if self._closing.is_set():
                raise DownstreamError(f"server '{self.name}' is closed")
            await self._ready.wait()

    # --- the supervisor ----------------------------------------------------------------------

    async def _supervise(self) -> None:
        delay = BACKOFF_START_SECONDS
        while not self._closing.is_set():
            self.state = ServerState.CONNECTING
            self._broken.clear()
            established = False
            try:
                established = await self._session_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # every failure is reported, then retried
                self.last_error = self._clean(_describe(exc))
                if not self._closing.is_set():
                    logger.warning("server '%s': %s", self.name, self.last_error)
            self._client = None
            self._ready.clear()
            self._attempted.set()
            if self._closing.is_set():
                break
            self.state = ServerState.DOWN
            if established:
                delay = BACKOFF_START_SECONDS
                self.last_error = self.last_error or "the session ended"
                logger.warning("server '%s': session ended; reconnecting", self.name)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._closing.wait()
            delay = min(delay * 2, BACKOFF_MAX_SECONDS)

    async def _session_once(self) -> bool:
        """Connect, publish the session until it breaks; True if it was established."""
        async with contextlib.AsyncExitStack() as stack:
            async with asyncio.timeout(self.config.connect_timeout_seconds):
                transport = self._transport(stack)
                client = await stack.enter_async_context(
                    Client(transport, message_handler=self._on_message)
                )
                self.tools = await _all_tools(client)
            self._client = client
            self.last_error = None
            self.state = ServerState.READY
            self._ready.set()
            self._attempted.set()
            logger.info("server '%s': connected, %d tools", self.name, len(self.tools))
            if self._on_tools_changed is not None:
                self._on_tools_changed(self)
            listening = asyncio.create_task(self._listen(client), name=f"mcp:{self.name}:listen")
            try:
                await self._broken.wait()
            finally:
                listening.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await listening
        return True

    def _transport(self, stack: contextlib.AsyncExitStack) -> AbstractAsyncContextManager[Any]:
        config = self.config
        if config.command is not None:
            where = f"server '{self.name}' env"
            env, self._secrets = resolve_values(config.env, where, self._environ, self._vault)
            params = StdioServerParameters(
                command=config.command, args=list(config.args), env=env or None, cwd=config.cwd
            )
            errlog = stack.enter_context(_StderrToLog(self.name, lambda: self._secrets))
            return self._watched(stdio_client(params, errlog=errlog.file))
        assert config.url is not None
        where = f"server '{self.name}' headers"
        headers, self._secrets = resolve_values(config.headers, where, self._environ, self._vault)
        return self._watched(self._http(config.url, headers))

    @asynccontextmanager
    async def _http(self, url: str, headers: dict[str, str]) -> AsyncIterator[Any]:
        async with (
            create_mcp_http_client(headers=headers) as http,
            streamable_http_client(url, http_client=http) as streams,
        ):
            yield streams

    @asynccontextmanager
    async def _watched(self, transport: AbstractAsyncContextManager[Any]) -> AsyncIterator[Any]:
        """The transport, with its read stream telling us when it reaches its end."""
        async with transport as (read, write):
            yield _EndWatcher(read, self._break), write

    async def _on_message(self, message: Any) -> None:
        # Protocol versions before 2026-07-28 send list changes on the session.
        method = getattr(getattr(message, "root", message), "method", None)
        if method == "notifications/tools/list_changed" and self._client is not None:
            await self._relist(self._client)

    async def _listen(self, client: Client) -> None:
        """From 2026-07-28 on, list changes come on a `subscriptions/listen` stream."""
        try:
            async with client.listen(tools_list_changed=True) as subscription:
                async for _event in subscription:
                    await self._relist(client)
        except asyncio.CancelledError:
            raise
        except ListenNotSupportedError:  # an earlier version: `_on_message` hears of changes
            return
        except Exception as exc:  # the server offers no such stream: its list stays as listed
            logger.info("server '%s': no tool list changes: %s", self.name, _describe(exc))

    async def _relist(self, client: Client) -> None:
        try:
            self.tools = await _all_tools(client)
        except Exception as exc:
            logger.warning("server '%s': relisting tools failed: %s", self.name, exc)
            return
        logger.info("server '%s': tool list changed, %d tools", self.name, len(self.tools))
        if self._on_tools_changed is not None:
            self._on_tools_changed(self)

    def _clean(self, text: str) -> str:
        return scrub(text, self._secrets)


async def _all_tools(client: Client) -> list[Tool]:
    tools: list[Tool] = []
    cursor: str | None = None
    while True:
        page: ListToolsResult = await client.list_tools(cursor=cursor, cache_mode="refresh")
        tools += page.tools
        cursor = page.next_cursor
        if not cursor:
            return tools


def _describe(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(_describe(e) for e in exc.exceptions)
    if isinstance(exc, TimeoutError):
        return "no answer to the handshake in time"
    if isinstance(exc, FileNotFoundError):
        return f"command not found: {exc.filename or exc}"
    if isinstance(exc, MCPError):
        return exc.error.message
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class _EndWatcher:
    """A read stream that calls `on_end` when the stream it wraps is exhausted or closed."""

    def __init__(self, stream: Any, on_end: Callable[[], None]) -> None:
        self._stream = stream
        self._on_end = on_end

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)

    async def __aenter__(self) -> _EndWatcher:
        await self._stream.__aenter__()
        return self

    async def __aexit__(self, *exc: Any) -> Any:
        self._on_end()
        return await self._stream.__aexit__(*exc)

    def __aiter__(self) -> _EndWatcher:
        return self

    async def __anext__(self) -> Any:
        try:
            return await self._stream.__anext__()
        except BaseException:
            self._on_end()
            raise

    async def receive(self) -> Any:
        try:
            return await self._stream.receive()
        except BaseException:
            self._on_end()
            raise


class _StderrToLog:
    """A pipe whose write end is the subprocess's stderr; a thread logs what it reads."""

    def __init__(self, name: str, secrets: Callable[[], list[str]]) -> None:
        self._name = name
        self._secrets = secrets
        read_fd, write_fd = os.pipe()
        self.file: TextIO = os.fdopen(write_fd, "w")
        self._reader = os.fdopen(read_fd, "r", errors="replace")
        self._thread = threading.Thread(target=self._pump, name=f"stderr:{name}", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        with self._reader:
            for line in self._reader:
                text = scrub(line.rstrip("\n"), self._secrets())
                if text:
                    logger.info("[%s] %s", self._name, text)

    def __enter__(self) -> _StderrToLog:
        return self

    def __exit__(self, *exc: Any) -> None:
        # Our copy of the write end; the reader ends when the subprocess's copy closes too.
        self.file.close()
