"""Durable execution across process death: the harness shared by the tests in this package.

The child process is `worker.py`; this module starts and kills it, reads what it reported, and
checks the ledger, the run index and the effects file it leaves behind.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from governance.checkpoint import Signer
from governance.envelope import EnvelopeKind, GovernanceEnvelope
from kernel import Trace
from tests.durable.worker import close_journal, open_journal

WORKER = Path(__file__).with_name("worker.py")
ROOT = Path(__file__).parents[2]
STEP_ACK = "ev append:step:"


def seeded_signer(rng: random.Random) -> Signer:
    return Signer("durable-test", Ed25519PrivateKey.from_private_bytes(rng.randbytes(32)))


class WorkerProcess:
    """One worker process; a thread collects every complete line it prints."""

    def __init__(self, *args: str, stdin: bool = False) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(WORKER), *args],
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        self.lines: list[str] = []
        self._stderr: list[str] = []
        self._changed = threading.Condition()
        self._eof = False
        self._threads = [
            threading.Thread(target=self._read_stdout, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.endswith("\n"):  # a line torn by the kill was never reported whole
                with self._changed:
                    self.lines.append(line[:-1])
                    self._changed.notify_all()
        with self._changed:
            self._eof = True
            self._changed.notify_all()

    def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        self._stderr.extend(self.process.stderr)

    def wait_for(self, predicate: Callable[[list[str]], bool], timeout: float = 30.0) -> bool:
        """Wait until `predicate(lines)` holds (True) or the worker's output ended (False)."""
        with self._changed:
            self._changed.wait_for(lambda: predicate(self.lines) or self._eof, timeout)
            return predicate(self.lines)

    def send(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def kill(self) -> bool:
        """SIGKILL the worker; True if it was still running."""
        alive = self.process.poll() is None
        if alive:
            os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait()
        self._join()
        return alive

    def finish(self, timeout: float = 60.0) -> int:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"worker did not finish in {timeout}s: {self.describe()}"
            ) from None
        self._join()
        return self.process.returncode

    def _join(self) -> None:
        for thread in self._threads:
            thread.join(10)

    def describe(self) -> str:
        tail = "".join(self._stderr)[-3000:]
        return f"exit code {self.process.returncode}, last lines {self.lines[-5:]}, stderr:\n{tail}"


def run_args(
    db: Path,
    signer: Signer,
    effects: Path,
    gen: int,
    *,
    runs: int = 1,
    concurrency: int = 1,
    sync: str = "FULL",
    gated: bool = False,
    crash_after: str | None = None,
) -> list[str]:
    args = ["run", "--db", str(db), "--key", signer.to_text(), "--effects", str(effects)]
    args += ["--gen", str(gen), "--runs", str(runs), "--concurrency", str(concurrency)]
    args += ["--sync", sync]
    if gated:
        args.append("--gated")
    if crash_after is not None:
        args += ["--crash-after", crash_after]
    return args


def steps_acknowledged(lines: Sequence[str]) -> int:
    return sum(line.startswith(STEP_ACK) for line in lines)


def after_steps(count: int) -> Callable[[list[str]], bool]:
    """A `wait_for` predicate: the worker has acknowledged `count` step records."""
    return lambda lines: steps_acknowledged(lines) >= count


def after_lines(count: int) -> Callable[[list[str]], bool]:
    """A `wait_for` predicate: the worker has printed `count` lines."""
    return lambda lines: len(lines) >= count


def acknowledged_envelopes(lines: Sequence[str]) -> dict[int, str]:
    """{seq: entry hash} of every envelope whose append the worker saw return."""
    found = {}
    for line in lines:
        if line.startswith("ev append:"):
            _, _, _, seq, entry_hash = line.split()
            found[int(seq)] = entry_hash
    return found


# -- what the runs left behind -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Effect:
    trace_id: str
    step_id: str
    key: str
    by: str


def read_effects(path: Path) -> list[Effect]:
    """Every effect line; each was written with one write() call, so none is torn."""
    if not path.exists():
        return []
    text = path.read_text()
    assert not text or text.endswith("\n"), "a torn effect line"
    effects = []
    for line in text.splitlines():
        fields = line.split(" ")
        assert len(fields) == 4, f"malformed effect line {line!r}"
        effects.append(Effect(*fields))
    return effects


@dataclass
class LedgerView:
    index: dict[str, str]  # trace id -> status in the run index
    traces: dict[str, Trace]  # as `journal.get_trace` returns them
    envelopes: dict[str, list[GovernanceEnvelope]]  # per trace id, in seq order
    size: int


async def read_ledger(db: Path, signer: Signer) -> LedgerView:
    connection = sqlite3.connect(db)
    try:
        index = dict(connection.execute("SELECT trace_id, status FROM lf_runs").fetchall())
    finally:
        connection.close()
    journal = await open_journal(str(db), signer, checkpoint_on_close=False)
    try:
        traces = {tid: await journal.get_trace(tid) for tid in index}
        envelopes: dict[str, list[GovernanceEnvelope]] = defaultdict(list)
        for envelope in await journal.ledger.query():
            envelopes[envelope.execution_id].append(envelope)
        return LedgerView(index, traces, dict(envelopes), journal.ledger.size)
    finally:
        await close_journal(journal)


def expected_records(number: int, *, gated: bool) -> list[tuple[str, str]]:
    """(step id, status) of every record of a complete run of the worker's program."""
    branch = "even" if number % 2 == 0 else "odd"
    records = [(step, "SUCCESS") for step in ("prepare", "ship_a", "ship_b", "fan", "route")]
    records.append((branch, "SUCCESS"))
    if gated:
        records += [("gate", "SUSPENDED"), ("gate", "RESUMED")]
    records.append(("finish", "SUCCESS"))
    return records


def effect_steps(number: int, *, gated: bool) -> list[str]:
    """The steps whose tool has an external effect, on this run's path."""
    branch = "even" if number % 2 == 0 else "odd"
    return ["prepare", "ship_a", "ship_b", branch, *(["gate"] if gated else []), "finish"]


@dataclass
class Findings:
    """What the checks counted (asserted facts are not repeated here)."""

    executions: dict[tuple[str, str], list[Effect]] = field(default_factory=dict)
    missing_run_started: list[str] = field(default_factory=list)
    extra_run_finished: list[str] = field(default_factory=list)

    def repeated(self, times: int) -> list[tuple[str, str]]:
        return sorted(k for k, runs in self.executions.items() if len(runs) == times)


def check_runs(
    view: LedgerView, effects: list[Effect], numbers: dict[str, int], *, gated: bool
) -> Findings:
    """Every run complete and SUCCESS, each step recorded once, each effect under its one key."""
    assert sorted(view.index) == sorted(numbers), "runs started != runs requested"
    findings = Findings()
    for trace_id, number in numbers.items():
        assert view.index[trace_id] == "SUCCESS", (trace_id, view.index[trace_id])
        trace = view.traces[trace_id]
        assert trace.status.value == "SUCCESS"
        records = [(r.step_id, r.status.value) for r in trace.steps]
        # One record per step (this is the ledger's content: get_trace rebuilds from envelopes).
        assert records == expected_records(number, gated=gated), (trace_id, records)
        kinds = [e.kind for e in view.envelopes[trace_id]]
        assert kinds[-1] is EnvelopeKind.RUN_FINISHED, (trace_id, kinds)
        if kinds.count(EnvelopeKind.RUN_STARTED) != 1:
            findings.missing_run_started.append(trace_id)
        if kinds.count(EnvelopeKind.RUN_FINISHED) != 1:
            findings.extra_run_finished.append(trace_id)
        assert kinds.count(EnvelopeKind.RUN_STARTED) <= 1, (trace_id, kinds)
    grouped: dict[tuple[str, str], list[Effect]] = defaultdict(list)
    for effect in effects:
        grouped[effect.trace_id, effect.step_id].append(effect)
    expected = {
        (trace_id, step) for trace_id, n in numbers.items() for step in effect_steps(n, gated=gated)
    }
    assert set(grouped) == expected, f"effects off the path: {sorted(set(grouped) - expected)}"
    for (trace_id, step), runs in grouped.items():
        # The same key every time: an idempotent API would have deduplicated the repeats.
        assert {e.key for e in runs} == {f"{trace_id}:{step}:1"}, runs
    findings.executions = dict(grouped)
    return findings


def recorded_by(view: LedgerView, trace_id: str, step_id: str) -> str:
    """Which incarnation's execution of a step the ledger kept (its output says)."""
    [record] = [r for r in view.traces[trace_id].steps if r.step_id == step_id]
    assert isinstance(record.output, dict)
    by = record.output["by"]
    assert isinstance(by, str)
    return by
