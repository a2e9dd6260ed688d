"""A small C2SP tlog-witness for the tests, served on loopback by uvicorn in a thread.

It keeps, per log origin, the latest checkpoint it cosigned; answers add-checkpoint with 404
(unknown origin), 403 (not signed by the log's key), 400 (old size above the checkpoint's),
409 with its size (old size is not the one it cosigned), 422 (the consistency proof fails) or
200 with an Ed25519 cosignature/v1 line, signed here with `cryptography` directly.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import uvicorn
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from governance.checkpoint import Checkpoint, Verifier, open_checkpoint
from governance.errors import LedgerError
from governance.merkle import verify_consistency


@dataclass
class Witness:
    name: str
    logs: dict[str, str]  # origin -> the log's verifier key
    key: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)
    seen: dict[str, tuple[int, bytes]] = field(default_factory=dict)  # origin -> size, root
    requests: list[int] = field(default_factory=list)  # the status of each answer

    @property
    def public(self) -> bytes:
        return self.key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    @property
    def key_id(self) -> bytes:
        return hashlib.sha256(self.name.encode() + b"\n\x04" + self.public).digest()[:4]

    @property
    def vkey(self) -> str:
        encoded = base64.b64encode(b"\x04" + self.public).decode()
        return f"{self.name}+{self.key_id.hex()}+{encoded}"

    def answer(self, body: bytes) -> tuple[int, str]:
        head, sep, note = body.partition(b"\n\n")
        lines = head.decode().split("\n")
        if not sep or not lines[0].startswith("old "):
            return 400, "malformed request\n"
        old = int(lines[0][4:])
        proof = [base64.b64decode(line) for line in lines[1:]]
        text = note.partition(b"\n\n")[0] + b"\n"
        origin = Checkpoint.parse_body(text).origin
        if origin not in self.logs:
            return 404, "unknown log\n"
        try:
            checkpoint = open_checkpoint(note, [Verifier.from_text(self.logs[origin])]).checkpoint
        except LedgerError:
            return 403, "not signed by the log's key\n"
        if old > checkpoint.size:
            return 400, "old size above the checkpoint's\n"
        size, root = self.seen.get(origin, (0, b""))
        if old != size:
            return 409, f"{size}\n"
        if old > 0:
            try:
                verify_consistency(old, checkpoint.size, proof, root, checkpoint.root)
            except LedgerError as exc:
                return 422, f"inconsistent: {exc}\n"
        self.seen[origin] = (checkpoint.size, checkpoint.root)
        now = int(time.time())
        message = b"cosignature/v1\ntime " + str(now).encode() + b"\n" + text
        signature = self.key_id + now.to_bytes(8, "big") + self.key.sign(message)
        return 200, f"\u2014 {self.name} {base64.b64encode(signature).decode()}\n"

    async def add_checkpoint(self, request: Request) -> PlainTextResponse:
        status, text = self.answer(await request.body())
        self.requests.append(status)
        media = "text/x.tlog.size" if status == 409 else "text/plain"
        return PlainTextResponse(text, status_code=status, media_type=media)


@contextlib.contextmanager
def serving(witness: Witness) -> Iterator[str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    app = Starlette(routes=[Route("/add-checkpoint", witness.add_checkpoint, methods=["POST"])])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "the witness did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
