"""What each `synchronous` setting of the ledger gives, shown by test.

The ledger is an SQLite file in WAL mode. `Ledger.open_at(path, ..., synchronous=...)`:

  FULL (default)  every COMMIT fsyncs the WAL before `append` returns: an acknowledged step
                  survives the death of the process and a crash of the machine (power loss).
  NORMAL          a COMMIT is written to the WAL but fsynced only at WAL checkpoints: an
                  acknowledged step survives the death of the process (the WAL is in the
                  operating system's cache, which outlives the process) but the last commits may
                  be lost if the machine itself crashes; the file is never corrupted either way.
  anything else   refused (OFF would give up even the order of commits on a machine crash).

Shown here: under both FULL and NORMAL, a worker running durable runs and killed with SIGKILL at
seeded moments loses nothing it acknowledged (every envelope whose append returned is stored,
byte for byte, as soon as the process is dead) and a new process finishes every run. A machine
crash cannot be staged in a test; that difference is the documentation's.

`LedgerJournal.open(ledger, path)` opens the run index with synchronous=FULL whatever the ledger
uses; a service choosing NORMAL opens `RunStore.in_file(path, synchronous="NORMAL")` itself and
passes it to `LedgerJournal(ledger, runs)`, as the worker does.
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
from pathlib import Path

import pytest

from governance import Ledger, SqliteLedgerStore, verify_ledger_at
from governance.checkpoint import Signer
from governance.journal import LedgerJournal
from tests.durable import (
    WorkerProcess,
    acknowledged_envelopes,
    after_steps,
    check_runs,
    read_effects,
    read_ledger,
    run_args,
    seeded_signer,
)
from tests.durable.worker import ORIGIN, trace_id

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX SIGKILL")

SEED = 20_251_126
KILLS = 8
RUNS = 24
PRAGMA = {"FULL": "sync 2 2", "NORMAL": "sync 1 1"}  # PRAGMA synchronous: FULL=2, NORMAL=1


async def _stored(db: Path) -> dict[int, str]:
    store = SqliteLedgerStore(db, readonly=True)
    await store.open()
    try:
        return {e.seq: e.entry_hash for e in await store.read_range(0, 2**62)}
    finally:
        await store.close()


@pytest.mark.parametrize("synchronous", ["FULL", "NORMAL"])
def test_sigkill_loses_no_acknowledged_step(tmp_path: Path, synchronous: str) -> None:
    rng = random.Random(SEED)
    signer = seeded_signer(rng)
    db, effects = tmp_path / "ledger.db", tmp_path / "effects.log"

    def incarnation(gen: int) -> WorkerProcess:
        args = run_args(db, signer, effects, gen, runs=RUNS, concurrency=2, sync=synchronous)
        return WorkerProcess(*args)

    acknowledged: dict[int, str] = {}
    for gen in range(KILLS):
        worker = incarnation(gen)
        worker.wait_for(after_steps(rng.randint(1, 8)))
        time.sleep(rng.uniform(0.0, 0.002))
        assert worker.kill(), f"incarnation {gen} ended before its kill: {worker.describe()}"
        assert PRAGMA[synchronous] in worker.lines  # the setting is the one really in force
        new = acknowledged_envelopes(worker.lines)
        assert new, "nothing was acknowledged before the kill"
        # Right after the death, before any new process touches the file.
        stored = asyncio.run(_stored(db))
        lost = {seq for seq, entry_hash in new.items() if stored.get(seq) != entry_hash}
        assert not lost, f"{synchronous}: acknowledged but lost after SIGKILL: {sorted(lost)}"
        acknowledged.update(new)

    final = incarnation(KILLS)
    assert final.finish() == 0, final.describe()
    assert "done" in final.lines
    view = asyncio.run(read_ledger(db, signer))
    check_runs(view, read_effects(effects), {trace_id(n): n for n in range(RUNS)}, gated=False)
    stored = asyncio.run(_stored(db))
    assert all(stored.get(seq) == entry_hash for seq, entry_hash in acknowledged.items())
    report = asyncio.run(verify_ledger_at(db, [signer.verifier().to_text()]))
    assert report.ok, report


def test_only_full_and_normal_are_accepted(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="FULL' or 'NORMAL"):
        SqliteLedgerStore(tmp_path / "ledger.db", synchronous="OFF")  # type: ignore[arg-type]


async def test_journal_open_keeps_the_run_index_at_full(tmp_path: Path) -> None:
    db = tmp_path / "ledger.db"
    signer = Signer.generate("durable-test")
    ledger = await Ledger.open_at(db, signer=signer, origin=ORIGIN, synchronous="NORMAL")
    journal = await LedgerJournal.open(ledger, db)
    try:
        assert ledger.store.synchronous == "NORMAL"  # type: ignore[attr-defined]
        assert journal.runs.synchronous == "FULL"
        assert await journal.runs.db.fetchone("PRAGMA synchronous") == (2,)
    finally:
        await journal.close()
        await ledger.close()
