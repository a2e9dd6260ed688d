"""A ledger database file and everything that lives beside it, opened together.

    PATH              the ledger (envelopes, checkpoints) and the run index (governance.runs)
    PATH.keys         the vault's key store: secrets, encrypted per data subject
    PATH.kek          the vault's key-encryption key, unless LEDGERFLOW_KEK is set
    PATH.signing-key  the Ed25519 key that signs checkpoints (Signer text form)
    PATH.lock         flock: shared by every process that writes, exclusive during recovery

Missing files are created on first use with mode 0600. A key is never replaced silently: no
new KEK is made for a key store that exists, and no new signing key for a ledger that holds
envelopes (the secrets already stored could no longer be read, the checkpoints no longer
verify with the key auditors hold).

Several processes may write to one ledger at once (SQLite serialises their commits and the
ledger takes in what the others appended). Each writing workspace holds a SHARED flock on
PATH.lock while open; the OS drops it when the process dies. Recovery needs the opposite
guarantee, that no other live process is executing a run it would take over, so `recover`
upgrades to an EXCLUSIVE lock first: it gets it only when every other writer is gone.
Readers (`reader=True`) take no lock.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import re
import time
import uuid
from collections.abc import Mapping
from pathlib import Path

from governance.checkpoint import Signer
from governance.envelope import EnvelopeKind
from governance.errors import CheckpointError
from governance.journal import LedgerJournal
from governance.ledger import Ledger
from governance.runs import RunStore
from governance.sqlite_store import SqliteLedgerStore
from governance.store import Synchronous
from kernel import ExecutionVM, LedgerflowError, LLMAdapter, Trace, TraceStatus
from kernel.tools import Tool
from vault import ENV_VAR as KEK_ENV_VAR
from vault import ErasureReceipt, Kek, Vault, generate_kek_file, load_kek_env, load_kek_file

KEYS_SUFFIX = ".keys"
KEK_SUFFIX = ".kek"
SIGNING_KEY_SUFFIX = ".signing-key"
LOCK_SUFFIX = ".lock"
LOCK_WAIT_SECONDS = 30.0
ORIGIN_PREFIX = "ledgerflow/"
_ACTIVE = (TraceStatus.RUNNING.value, TraceStatus.SUSPENDED.value)


class WorkspaceError(LedgerflowError):
    """The files beside a ledger do not fit together (a key is missing or unreadable)."""


class LedgerBusyError(WorkspaceError):
    """Other live processes write to the ledger, so runs they execute cannot be recovered."""


class Workspace:
    """An open ledger with its journal and vault. Create with `await Workspace.open(path)`."""

    def __init__(
        self,
        path: Path,
        ledger: Ledger,
        journal: LedgerJournal,
        vault: Vault,
        signer: Signer,
        lock: int | None,
    ) -> None:
        """Use `Workspace.open`."""
        self.path = path
        self.ledger = ledger
        self.journal = journal
        self.vault = vault
        self._signer = signer
        self._lock = lock
        self._closed = False

    @classmethod
    async def open(
        cls,
        db_path: str | os.PathLike[str],
        *,
        keys_path: str | os.PathLike[str] | None = None,
        kek_path: str | os.PathLike[str] | None = None,
        signing_key_path: str | os.PathLike[str] | None = None,
        origin: str | None = None,
        synchronous: Synchronous = "FULL",
        reader: bool = False,
    ) -> Workspace:
        """Open (creating what is missing) the ledger at `db_path` and its companion files.

        `origin` defaults to the origin the ledger already has, else `ledgerflow/<file stem>`.
        `reader=True` is for looking only: no writer lock, no checkpoint on close.
        """
        db = Path(db_path)
        keys = _given_or_beside(keys_path, db, KEYS_SUFFIX)
        kek = _load_kek(None if kek_path is None else Path(kek_path), db, keys)
        signing = _given_or_beside(signing_key_path, db, SIGNING_KEY_SUFFIX)
        lock = None if reader else await _shared_lock(beside(db, LOCK_SUFFIX), db)
        store = SqliteLedgerStore(db, synchronous=synchronous)
        vault: Vault | None = None
        ledger: Ledger | None = None
        runs = RunStore(db, synchronous=synchronous)
        try:
            _create_private(db)  # SQLite gives its -wal and -shm files the mode of the database
            await store.open()
            origin = origin or await store.get_origin() or default_origin(db)
            signer = await _load_signer(signing, origin, store)
            vault = Vault.open(keys, kek)
            ledger = await Ledger.open(
                store,
                signer,
                origin,
                synchronous=synchronous,
                checkpoint_on_close=not reader,
            )
            await runs.open()
        except BaseException:
            await runs.close()
            await (ledger.close() if ledger is not None else store.close())
            if vault is not None:
                vault.close()
            if lock is not None:
                os.close(lock)
            raise
        journal = LedgerJournal(ledger, runs, secrets=vault)
        return cls(db, ledger, journal, vault, signer, lock)

    async def close(self) -> None:
        """Close the run index, the ledger (cutting a last checkpoint) and the vault."""
        if self._closed:
            return
        self._closed = True
        try:
            await self.journal.close()
        finally:
            try:
                await self.ledger.close()
            finally:
                self.vault.close()
                if self._lock is not None:
                    os.close(self._lock)  # releases the flock

    async def __aenter__(self) -> Workspace:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def recover(
        self, vm: ExecutionVM, *, wait_seconds: float = LOCK_WAIT_SECONDS
    ) -> list[Trace]:
        """`vm.recover()` once this is the only live writer (waiting up to `wait_seconds` for
        the others to finish); LedgerBusyError if they do not."""
        if self._lock is None:
            raise WorkspaceError("a reader workspace cannot recover runs")
        await _upgrade(self._lock, self.path, wait_seconds)
        try:
            return await vm.recover()
        finally:
            fcntl.flock(self._lock, fcntl.LOCK_SH)

    def vm(
        self, tools: Mapping[str, Tool] | None = None, llm: LLMAdapter | None = None
    ) -> ExecutionVM:
        """An ExecutionVM that journals to this ledger and resolves secrets from this vault."""
        return ExecutionVM(tools=tools, llm=llm, journal=self.journal, secrets=self.vault)

    def audit_key(self) -> str:
        """The verifier key text of the checkpoint signer: what auditors pass to `verify`."""
        return self._signer.verifier().to_text()

    async def trace(self, trace_id: str) -> Trace:
        """The run as recorded, its secrets shown as they may be shown now: a ref erased since
        it was recorded shows as a tombstone. KeyError for an unknown run."""
        return await self.journal.get_trace(trace_id)

    def view(self, trace: Trace) -> Trace:
        """A copy of a live trace (one the VM just returned) shown as `trace(id)` would show
        it, without reading it back from the ledger."""
        projector = self.journal.projector
        shown = trace.model_copy(deep=True)
        shown.context = projector.for_trace(shown.context)
        shown.final_output = projector.for_trace(shown.final_output)
        for record in shown.steps:
            record.output = projector.for_trace(record.output)
        return shown

    async def erase(
        self, subject: str, reason: str, request_id: str | None = None
    ) -> ErasureReceipt:
        """Crypto-shred `subject` in the vault, then record the erasure and sign a checkpoint.

        The erase envelope carries no personal data (the subject only as its SHA-256) and lists
        the unfinished runs holding the erased refs: their later envelopes will carry
        tombstones, which the ledger accepts only for executions an erasure covers. The vault
        goes first: an envelope must never claim an erasure that did not happen.
        """
        request_id = request_id or f"erase-{uuid.uuid4()}"
        receipt = self.vault.erase(subject, request_id)
        await self.ledger.append(
            request_id,
            EnvelopeKind.ERASE,
            payload={
                "request_id": request_id,
                "subject_hash": receipt.subject_hash,
                "refs": list(receipt.ref_ids),
                "execution_ids": await self._runs_holding(receipt.ref_ids),
                "reason": reason,
                "erased_at": receipt.erased_at.isoformat(),
            },
        )
        await self.ledger.checkpoint()
        return receipt

    async def _runs_holding(self, ref_ids: tuple[str, ...]) -> list[str]:
        """Unfinished runs whose context or envelopes mention one of `ref_ids`.

        Finished runs get no new envelopes, so they need no coverage.
        """
        if not ref_ids:
            return []
        runs = self.journal.runs
        found = []
        for status in _ACTIVE:
            for row in await runs.with_status(status):
                texts = [json.dumps(row.context)]
                texts += [
                    json.dumps(envelope.payload)
                    for envelope in await self.ledger.query(execution_id=row.trace_id)
                ]
                if any(ref in text for ref in ref_ids for text in texts):
                    found.append(row.trace_id)
        return sorted(found)


def default_origin(db: Path) -> str:
    return ORIGIN_PREFIX + db.stem


def beside(db: Path, suffix: str) -> Path:
    """A companion file: `ledger.db` -> `ledger.db.keys`."""
    return db.with_name(db.name + suffix)


def _given_or_beside(given: str | os.PathLike[str] | None, db: Path, suffix: str) -> Path:
    return Path(given) if given is not None else beside(db, suffix)


def _create_private(path: Path, data: bytes | None = None) -> None:
    """Create `path` with mode 0600 holding `data`; an existing file is left alone when `data`
    is None (an empty file is a valid empty SQLite database)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        if data is None:
            return
        raise
    with os.fdopen(fd, "wb") as file:
        os.fchmod(fd, 0o600)  # O_CREAT's mode is filtered by the umask
        if data:
            file.write(data)
            file.flush()
            os.fsync(fd)


async def _shared_lock(path: Path, db: Path) -> int:
    """An open descriptor of `path` holding a shared flock (a separate file: SQLite's own locks
    on the database must not meet it). Waits while a recovery holds it exclusively."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        await _flock(fd, fcntl.LOCK_SH, db, LOCK_WAIT_SECONDS)
    except BaseException:
        os.close(fd)
        raise
    return fd


async def _upgrade(fd: int, db: Path, wait_seconds: float) -> None:
    await _flock(fd, fcntl.LOCK_EX, db, wait_seconds)


async def _flock(fd: int, mode: int, db: Path, wait_seconds: float) -> None:
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        if time.monotonic() >= deadline:
            what = "recovering" if mode == fcntl.LOCK_SH else "writing to"
            raise LedgerBusyError(
                f"another process is {what} the ledger {db}; gave up after {wait_seconds:.0f} s"
            )
        await asyncio.sleep(0.05)


def _load_kek(given: Path | None, db: Path, keys: Path) -> Kek:
    if given is None and os.environ.get(KEK_ENV_VAR):
        return load_kek_env()
    path = given if given is not None else beside(db, KEK_SUFFIX)
    if path.exists():
        return load_kek_file(path)
    if keys.exists():
        raise WorkspaceError(
            f"the key store {keys} exists but its KEK {path} does not; refusing to make a new "
            f"KEK, which could not read the secrets stored (give it with --kek or {KEK_ENV_VAR})"
        )
    return generate_kek_file(path)


def _read_signer(path: Path) -> Signer | None:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except UnicodeDecodeError:
        raise WorkspaceError(f"signing key {path} is not text") from None
    try:
        return Signer.from_text(text.strip())
    except CheckpointError as exc:
        raise WorkspaceError(f"signing key {path} is not a signer key: {exc}") from None


async def _load_signer(path: Path, origin: str, store: SqliteLedgerStore) -> Signer:
    signer = _read_signer(path)
    if signer is not None:
        return signer
    if await store.head() is not None:
        raise WorkspaceError(
            f"the ledger holds envelopes but its signing key {path} is missing; refusing to "
            "sign with a new key that auditors do not hold (give it with --signing-key)"
        )
    # Key names may hold neither '+' nor whitespace; origins may.
    signer = Signer.generate(re.sub(r"[\s+]", "-", origin))
    _create_private(path, (signer.to_text() + "\n").encode())
    return signer
