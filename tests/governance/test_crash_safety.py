"""Crash safety: a writer process appending with group commit (synchronous=FULL) is killed with
SIGKILL at seeded random moments; after each kill every acknowledged envelope must be stored,
byte for byte, the chain and checkpoints must verify, and a new writer continues the same file."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from governance.checkpoint import Signer
from governance.ledger import Ledger

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX SIGKILL")

WRITER = Path(__file__).with_name("crash_writer.py")
ORIGIN = "ledgerflow.test/crash"
SEED = 20_240_607
KILLS = 24


def _signer(rng: random.Random) -> Signer:
    return Signer(ORIGIN, Ed25519PrivateKey.from_private_bytes(rng.randbytes(32)))


class Writer:
    """One writer process and the acknowledgements it printed, read by a thread."""

    def __init__(self, path: Path, signer: Signer, tasks: int) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(WRITER), str(path), signer.to_text(), ORIGIN, str(tasks)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).parents[2],
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)

    def wait_for_first_ack(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.lines:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"writer acknowledged nothing: {self.stderr()}")
            time.sleep(0.002)

    def kill(self) -> dict[int, str]:
        """SIGKILL the writer; return {seq: entry_hash} of every acknowledged append."""
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait()
        self._reader.join()
        acknowledged: dict[int, str] = {}
        for line in self.lines:
            if line.endswith("\n"):  # a torn last line was never a complete acknowledgement
                seq, entry_hash = line.split()
                acknowledged[int(seq)] = entry_hash
        return acknowledged

    def stderr(self) -> str:
        assert self.process.stderr is not None
        if self.process.poll() is None:
            return "(still running)"
        return self.process.stderr.read()


async def _check(path: Path, signer: Signer, acknowledged: dict[int, str]) -> int:
    """Reopen the ledger; every acknowledged envelope is there and everything verifies."""
    ledger = await Ledger.open_at(path, signer=signer, origin=ORIGIN, checkpoint_on_close=False)
    try:
        stored = {
            row.seq: row.entry_hash.hex()
            async for row in ledger.store.scan(min(acknowledged, default=0))
        }
        lost = {seq for seq, entry_hash in acknowledged.items() if stored.get(seq) != entry_hash}
        assert not lost, f"acknowledged but lost or changed: {sorted(lost)[:10]}"
        report = await ledger.verify()
        assert report.ok, report
        assert report.entries_checked == ledger.size
        return ledger.size
    finally:
        await ledger.close()


def test_sigkill_never_loses_an_acknowledged_append(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    signer = _signer(rng)
    path = tmp_path / "crash.db"
    acknowledged: dict[int, str] = {}
    sizes: list[int] = []
    for round_number in range(KILLS):
        tasks = rng.choice([1, 4, 16, 64])
        writer = Writer(path, signer, tasks)
        if round_number % 6 == 5:
            # Now and then, kill it wherever it is: opening, migrating, rebuilding the tree.
            time.sleep(rng.uniform(0.0, 0.4))
        else:
            writer.wait_for_first_ack()
            time.sleep(rng.uniform(0.0, 0.15))
        new = writer.kill()
        assert all(acknowledged.get(seq, h) == h for seq, h in new.items()), "a seq was reused"
        acknowledged.update(new)
        sizes.append(asyncio.run(_check(path, signer, acknowledged)))
    assert sizes == sorted(sizes)
    assert sizes[-1] >= len(acknowledged) > 0
