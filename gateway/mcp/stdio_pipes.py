"""stdin and stdout as event-loop pipes for the MCP server, without a thread per line.

The SDK's stdio transport (mcp 2.3) reads each line and writes and flushes each answer through
a worker thread: three thread hand-offs per call, each two wake-ups on a loaded 2-core machine.
Here stdin and stdout are read and written on the event loop instead (pipes, sockets and
terminals, what an MCP client starts the server with, are polled; a file is read by one thread
for the whole session), and the SDK's transport is given them as its streams, so parsing,
validation and serialisation stay the SDK's.

As the SDK does when it owns the descriptors, fds 0 and 1 point at the null device and at
stderr while serving, so a tool's stray read gets EOF and its stray print stays off the wire;
both are restored at the end. On Windows the SDK's transport serves: `wire_pipes` yields None.

When stdin ends (the client is done), the requests already read are answered before the server
hears of the end (within EOF_GRACE_SECONDS): the SDK's serving loop cancels what is in flight
once its input closes, and `cat requests | ledgerflow serve` expects every answer.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from typing import Any

import orjson

# A request line longer than this is answered as unreadable, not held in memory.
MAX_LINE_BYTES = 64 * 1024 * 1024
EOF_GRACE_SECONDS = 60.0


class _InFlight:
    """Requests read and answers written, so that the end of stdin can wait for the answers."""

    def __init__(self) -> None:
        self.requests: set[Any] = set()
        self.changed = asyncio.Event()

    def read(self, line: bytes) -> None:
        if b'"method"' in line and b'"id"' in line:  # a notification or a reply has no pair
            message = _object(line)
            if "method" in message and message.get("id") is not None:
                self.requests.add(_key(message["id"]))

    def written(self, text: str) -> None:
        if self.requests:
            message = _object(text)
            if "method" not in message and "id" in message:
                self.requests.discard(_key(message["id"]))
                self.changed.set()

    async def answered(self) -> None:
        while self.requests:
            self.changed.clear()
            await self.changed.wait()


def _object(text: bytes | str) -> dict[str, Any]:
    try:
        message = orjson.loads(text)
    except orjson.JSONDecodeError:
        return {}
    return message if isinstance(message, dict) else {}


def _key(request_id: Any) -> Any:
    return request_id if isinstance(request_id, str | int) else repr(request_id)


class _Lines:
    """`async for line in stdin`, as the SDK's transport reads it: text lines, newline kept."""

    def __init__(self, reader: asyncio.StreamReader, in_flight: _InFlight | None = None) -> None:
        self._reader = reader
        self._in_flight = in_flight or _InFlight()

    def __aiter__(self) -> _Lines:
        return self

    async def __anext__(self) -> str:
        try:
            line = await self._reader.readuntil(b"\n")
        except asyncio.IncompleteReadError as eof:  # the last line may lack its newline
            line = eof.partial
        except asyncio.LimitOverrunError:  # longer than the limit: left unread, skipped here
            await self._skip_line()
            return f"request line longer than {MAX_LINE_BYTES} bytes\n"  # fails to parse
        if not line:
            with suppress(TimeoutError):
                await asyncio.wait_for(self._in_flight.answered(), EOF_GRACE_SECONDS)
            raise StopAsyncIteration
        self._in_flight.read(line)
        return line.decode("utf-8", errors="replace")

    async def _skip_line(self) -> None:
        while True:
            try:
                await self._reader.readuntil(b"\n")
                return
            except asyncio.LimitOverrunError as overrun:
                await self._reader.readexactly(overrun.consumed)
            except asyncio.IncompleteReadError:
                return


class _Drainable(asyncio.Protocol):
    """Write-side protocol: lets a writer wait while the pipe is full."""

    def __init__(self) -> None:
        self._writable = asyncio.Event()
        self._writable.set()
        self.lost: BaseException | None = None

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost = exc or BrokenPipeError("stdout closed")
        self._writable.set()

    async def drain(self) -> None:
        await self._writable.wait()
        if self.lost is not None:
            raise self.lost


class _Out:
    """`await stdout.write(text)` and `await stdout.flush()`, as the SDK's transport writes:
    through a pipe transport, or straight to the descriptor when it is a file."""

    def __init__(
        self,
        fd: int,
        in_flight: _InFlight,
        pipe: tuple[asyncio.WriteTransport, _Drainable] | None,
    ) -> None:
        self._fd = fd
        self._in_flight = in_flight
        self._pipe = pipe

    async def write(self, text: str) -> None:
        data = text.encode("utf-8")
        if self._pipe is None:
            view = memoryview(data)
            while view:  # a file does not block for long: written here
                view = view[os.write(self._fd, view) :]
        else:
            transport, protocol = self._pipe
            if protocol.lost is not None:
                raise protocol.lost
            transport.write(data)
            await protocol.drain()
        self._in_flight.written(text)

    async def flush(self) -> None:
        return None  # each write has left this process already


@dataclass(frozen=True)
class Pipes:
    stdin: _Lines
    stdout: _Out


@asynccontextmanager
async def wire_pipes() -> AsyncIterator[Pipes | None]:
    """The process's stdin and stdout, read and written on the event loop (a file that cannot
    be polled is read by a thread), or None on Windows (the SDK's transport then)."""
    if sys.platform == "win32":
        yield None
        return
    import fcntl

    loop = asyncio.get_running_loop()
    wire_in = fcntl.fcntl(0, fcntl.F_DUPFD_CLOEXEC, 3)
    wire_out = fcntl.fcntl(1, fcntl.F_DUPFD_CLOEXEC, 3)
    blocking = os.get_blocking(wire_in), os.get_blocking(wire_out)
    transports: list[asyncio.BaseTransport] = []
    feeding: asyncio.Future[None] | None = None
    try:
        reader = asyncio.StreamReader(limit=MAX_LINE_BYTES)
        try:
            read_transport, _ = await loop.connect_read_pipe(
                lambda: asyncio.StreamReaderProtocol(reader),
                os.fdopen(wire_in, "rb", 0, closefd=False),
            )
            transports.append(read_transport)
        except (OSError, ValueError):  # a regular file, /dev/null: not pollable
            os.set_blocking(wire_in, True)
            feeding = asyncio.ensure_future(asyncio.to_thread(_feed, wire_in, reader, loop))
        pipe: tuple[asyncio.WriteTransport, _Drainable] | None = None
        try:
            pipe = await loop.connect_write_pipe(
                _Drainable, os.fdopen(wire_out, "wb", 0, closefd=False)
            )
            transports.append(pipe[0])
        except (OSError, ValueError):
            os.set_blocking(wire_out, True)
        in_flight = _InFlight()
        pipes = Pipes(_Lines(reader, in_flight), _Out(wire_out, in_flight, pipe))
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        os.dup2(2, 1)
        yield pipes
    finally:
        for transport in reversed(transports):
            transport.close()
        await asyncio.sleep(0)  # the transports finish closing before the fds move back
        if feeding is not None:
            feeding.cancel()  # the thread ends at its next read (a file never blocks long)
        for fd, wire, was_blocking in ((0, wire_in, blocking[0]), (1, wire_out, blocking[1])):
            with suppress(OSError):
                os.set_blocking(wire, was_blocking)  # the flag is the pipe's, shared with others
                os.dup2(wire, fd)
            with suppress(OSError):
                os.close(wire)


def _feed(fd: int, reader: asyncio.StreamReader, loop: asyncio.AbstractEventLoop) -> None:
    """On a thread: what a non-pollable stdin holds, handed to the loop's reader."""
    while chunk := os.read(fd, 1 << 16):
        loop.call_soon_threadsafe(reader.feed_data, chunk)
    loop.call_soon_threadsafe(reader.feed_eof)
