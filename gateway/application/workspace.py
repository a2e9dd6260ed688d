"""A ledger database and everything that lives beside it, opened together.

SQLite (a path): the companions are files beside the database.

    PATH              the ledger (envelopes, checkpoints) and the run index (governance.runs)
    PATH.keys         the vault's key store: secrets, encrypted per data subject
    PATH.kek          the vault's key-encryption key, unless LEDGERFLOW_KEK is set
    PATH.signing-key  the Ed25519 key that signs checkpoints (Signer text form)
    PATH.lock         flock: shared by every process that writes, exclusive during recovery

PostgreSQL (postgresql://...): the ledger, the run index and the vault's key store are tables
of the database (one pool per process); the KEK and the signing key are never in it. They come
from files named by `kek_path` and `signing_key_path` (every instance gets the same two), or
from LEDGERFLOW_KEK and LEDGERFLOW_SIGNING_KEY; a missing file is created while the ledger (or
the key store) is still empty, as for SQLite.

Missing files are created on first use with mode 0600. A key is never replaced silently: no
new KEK is made for a key store that exists, and no new signing key for a ledger that holds
envelopes (the secrets already stored could no longer be read, the checkpoints no longer
verify with the key auditors hold).

Several processes may write to one ledger at once (the database serialises their commits and
the ledger takes in what the others appended). Who may take over a run left RUNNING:
- SQLite: each writing workspace holds a SHARED flock on PATH.lock while open; the OS drops it
  when the process dies. `recover` upgrades to an EXCLUSIVE lock first: it gets it only when
  every other writer is gone, and then takes every RUNNING run.
- PostgreSQL: each workspace is an instance with a lease on the runs it executes (renewed in
  the background, `lease_seconds` long); `recover` takes over only runs whose lease expired,
  so it may run at any time, on any instance.
Readers (`reader=True`) take no lock and hold no lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import re
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from governance.checkpoint import Signer
from governance.envelope import EnvelopeKind
from governance.errors import CheckpointError
from governance.journal import Lease, LedgerJournal
from governance.ledger import Ledger
from governance.runs import RunStore
from governance.storage.database import Database
from governance.storage.database_url import DatabaseUrl
from governance.storage.ledger_port import LedgerStore, Synchronous
from governance.storage.operational_tables import OperationalTables
from governance.storage.sql_ledger import SqlLedgerStore
from governance.storage.sqlite_ledger import SqliteLedgerStore
from kernel import ExecutionVM, LedgerflowError, LLMAdapter, Trace, TraceStatus
from kernel.tools import Tool
from vault import ENV_VAR as KEK_ENV_VAR
from vault import ErasureReceipt, Kek, Vault, generate_kek_file, load_kek_env, load_kek_file
from vault.store import KeyStorage

Tables = TypeVar("Tables", bound=OperationalTables)

KEYS_SUFFIX = ".keys"
KEK_SUFFIX = ".kek"
SIGNING_KEY_SUFFIX = ".signing-key"
LOCK_SUFFIX = ".lock"
LOCK_WAIT_SECONDS = 30.0
ORIGIN_PREFIX = "ledgerflow/"
SIGNING_KEY_ENV = "LEDGERFLOW_SIGNING_KEY"
LEASE_SECONDS = 15.0
RECOVERY_CONCURRENCY = 16
logger = logging.getLogger("ledgerflow.workspace")
_ACTIVE = (TraceStatus.RUNNING.value, TraceStatus.SUSPENDED.value)


class WorkspaceError(LedgerflowError):
    """The files beside a ledger do not fit together (a key is missing or unreadable)."""


class LedgerBusyError(WorkspaceError):
    """Other live processes write to the ledger, so runs they execute cannot be recovered."""


@dataclass
class _Resources:
    """What a workspace holds open beside its ledger, journal and vault."""

    lock: int | None = None  # SQLite: the flock descriptor
    pool: Any = None  # PostgreSQL: the asyncpg pool of this process
    tables: Any = None  # PostgreSQL: a PostgresDatabase over the pool
    leases: asyncio.Task[None] | None = None

    async def close(self) -> None:
        if self.leases is not None:
            self.leases.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.leases
        if self.pool is not None:
            await self.pool.close()
        if self.lock is not None:
            os.close(self.lock)  # releases the flock


class Workspace:
    """An open ledger with its journal and vault. Create with `await Workspace.open(db)`."""

    def __init__(
        self,
        url: DatabaseUrl,
        ledger: Ledger,
        journal: LedgerJournal,
        vault: Vault,
        signer: Signer,
        resources: _Resources,
    ) -> None:
        """Use `Workspace.open`."""
        self.url = url
        self.path = url.path  # the SQLite file; None on PostgreSQL
        self.ledger = ledger
        self.journal = journal
        self.vault = vault
        self._signer = signer
        self._resources = resources
        self._closed = False

    @classmethod
    async def open(
        cls,
        db: str | os.PathLike[str] | DatabaseUrl,
        *,
        keys_path: str | os.PathLike[str] | None = None,
        kek_path: str | os.PathLike[str] | None = None,
        signing_key_path: str | os.PathLike[str] | None = None,
        origin: str | None = None,
        synchronous: Synchronous = "FULL",
        reader: bool = False,
        lease_seconds: float = LEASE_SECONDS,
    ) -> Workspace:
        """Open (creating what is missing) the ledger at `db` (a SQLite path, sqlite:///PATH or
        postgresql://...) and its companions.

        `origin` defaults to the origin the ledger already has, else `ledgerflow/<file stem>`
        (`ledgerflow/<database>[.<schema>]` on PostgreSQL). `reader=True` is for looking only:
        no writer lock, no lease, no checkpoint on close. `lease_seconds` (PostgreSQL) is how
        long this instance's runs stay its own without a renewal.
        """
        url = db if isinstance(db, DatabaseUrl) else DatabaseUrl.parse(os.fspath(db))
        kek = None if kek_path is None else Path(kek_path)
        signing = None if signing_key_path is None else Path(signing_key_path)
        if url.is_postgres:
            if keys_path is not None:
                raise WorkspaceError(
                    "a PostgreSQL ledger keeps its key store in the database: --keys is for "
                    "SQLite ledgers only"
                )
            return await cls._open_postgres(
                url, kek, signing, origin, synchronous, reader, lease_seconds
            )
        return await cls._open_sqlite(url, keys_path, kek, signing, origin, synchronous, reader)

    @classmethod
    async def _open_sqlite(
        cls,
        url: DatabaseUrl,
        keys_path: str | os.PathLike[str] | None,
        kek_path: Path | None,
        signing_key_path: Path | None,
        origin: str | None,
        synchronous: Synchronous,
        reader: bool,
    ) -> Workspace:
        assert url.path is not None
        db = url.path
        resources = _Resources()
        if not reader:
            resources.lock = await _shared_lock(beside(db, LOCK_SUFFIX), db)
        return await cls._assemble(
            url,
            SqliteLedgerStore(db, synchronous=synchronous),
            RunStore.in_file(db, synchronous=synchronous),
            keys_path,
            kek_path,
            (signing_key_path, beside(db, SIGNING_KEY_SUFFIX)),
            origin,
            reader,
            resources,
            lease=None,
        )

    @classmethod
    async def _open_postgres(
        cls,
        url: DatabaseUrl,
        kek_path: Path | None,
        signing_key_path: Path | None,
        origin: str | None,
        synchronous: Synchronous,
        reader: bool,
        lease_seconds: float,
    ) -> Workspace:
        from governance.storage.postgres_database import (
            PostgresDatabase,
            create_pool,
            ensure_schema,
        )
        from governance.storage.postgres_ledger import PostgresLedgerStore

        resources = _Resources(pool=await create_pool(url, synchronous=synchronous))
        try:
            await ensure_schema(resources.pool, url)
        except BaseException:
            await resources.close()
            raise
        resources.tables = PostgresDatabase(resources.pool, str(url), synchronous=synchronous)
        return await cls._assemble(
            url,
            PostgresLedgerStore(url, synchronous=synchronous, pool=resources.pool),
            RunStore(resources.tables),
            None,
            kek_path,
            (signing_key_path, None),
            origin,
            reader,
            resources,
            lease=None if reader else Lease(instance_id(), lease_seconds),
        )

    @classmethod
    async def _assemble(
        cls,
        url: DatabaseUrl,
        store: LedgerStore,
        runs: RunStore,
        keys_path: str | os.PathLike[str] | None,
        kek_path: Path | None,
        signing: tuple[Path | None, Path | None],  # (given, beside the database)
        origin: str | None,
        reader: bool,
        resources: _Resources,
        lease: Lease | None,
    ) -> Workspace:
        """Open the key store, the ledger store, the signer, the vault, the ledger and the run
        index, in that order; close whatever was opened if a later one fails. The keys are
        checked first, so that a missing KEK leaves nothing created."""
        vault: Vault | None = None
        ledger: Ledger | None = None
        storage: KeyStorage | Path | None = None
        try:
            storage = await asyncio.to_thread(open_key_store, url, keys_path)
            kek = load_kek_for(url, kek_path, storage)
            if url.path is not None:
                _create_private(url.path)  # SQLite gives its -wal and -shm files this mode
            await store.open()
            origin = origin or await store.get_origin() or default_origin(url)
            signer = await _load_signer(*signing, origin, store, str(url))
            vault = Vault.open(storage, kek)
            ledger = await Ledger.open(
                store, signer=signer, origin=origin, checkpoint_on_close=not reader
            )
            await runs.open()
        except BaseException:
            await runs.close()
            await (ledger.close() if ledger is not None else store.close())
            if vault is not None:
                vault.close()
            elif storage is not None and not isinstance(storage, Path):
                storage.close()
            await resources.close()
            raise
        journal = LedgerJournal(ledger, runs, secrets=vault, lease=lease)
        if lease is not None:
            resources.leases = asyncio.create_task(journal.keep_leases(), name="ledgerflow leases")
        return cls(url, ledger, journal, vault, signer, resources)

    async def close(self) -> None:
        """Stop renewing leases; close the run index, the ledger (cutting a last checkpoint),
        the vault and the connections."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._resources.leases is not None:
                self._resources.leases.cancel()
            await self.journal.close()
        finally:
            try:
                await self.ledger.close()
            finally:
                self.vault.close()
                await self._resources.close()

    async def __aenter__(self) -> Workspace:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def where(self) -> str:
        """The ledger as messages name it (a path, or a URL without its password)."""
        return str(self.url)

    @property
    def synchronous(self) -> str | None:
        """The durability level the ledger commits at (FULL or NORMAL)."""
        store = self.ledger.store
        return store.synchronous if isinstance(store, SqlLedgerStore) else None

    def shared_database(self) -> Database | None:
        """The PostgreSQL database every table of this process shares; None for a SQLite file
        (each group opens its own connection to it)."""
        database: Database | None = self._resources.tables
        return database

    def operational(self, group: type[Tables], **options: Any) -> Tables:
        """A group of operational tables (saved programs, tokens) in this ledger's database,
        unopened: over the shared PostgreSQL pool, or over the SQLite file on a connection of
        its own."""
        if self._resources.tables is not None:
            return group(self._resources.tables, **options)
        assert self.path is not None
        return group.in_file(self.path, **options)

    async def writable(self) -> bool:
        """Whether this process can write the ledger now (for readiness probes)."""
        if self.path is not None:
            return _file_writable(self.path)
        row = await self._resources.tables.fetchone(
            "SELECT NOT pg_is_in_recovery() AND current_setting('transaction_read_only') = 'off'"
        )
        return bool(row and row[0])

    async def recover(
        self,
        vm: ExecutionVM,
        *,
        wait_seconds: float = LOCK_WAIT_SECONDS,
        admit: Callable[[str], Awaitable[None]] | None = None,
    ) -> list[Trace]:
        """Continue the runs no live process executes.

        SQLite: `vm.recover()` once this is the only live writer (waiting up to `wait_seconds`
        for the others to finish), else LedgerBusyError. PostgreSQL: at once, taking over the
        runs whose lease expired (their instance died), `RECOVERY_CONCURRENCY` at a time; a run
        that cannot run here (a tool is missing) is logged and its lease given back."""
        if self.journal.lease is not None:
            return await self._recover_leased(vm, admit)
        lock = self._resources.lock
        if lock is None:
            raise WorkspaceError("a reader workspace cannot recover runs")
        assert self.path is not None
        await _upgrade(lock, self.path, wait_seconds)
        try:
            if admit is not None:  # every run admitted before any runs again
                for row in await self.journal.runs.with_status(TraceStatus.RUNNING.value):
                    await admit(row.trace_id)
            return await vm.recover()
        finally:
            fcntl.flock(lock, fcntl.LOCK_SH)

    async def _recover_leased(
        self, vm: ExecutionVM, admit: Callable[[str], Awaitable[None]] | None
    ) -> list[Trace]:
        slots = asyncio.Semaphore(RECOVERY_CONCURRENCY)

        async def one(program: dict[str, Any], trace: Trace) -> Trace | None:
            async with slots:
                try:
                    if admit is not None:
                        await admit(trace.trace_id)
                    return await vm.recover_run(program, trace)
                except LedgerflowError:
                    logger.exception("run %s cannot be recovered here", trace.trace_id)
                    await self.journal.release(trace.trace_id)
                    return None

        taken = await self.journal.running_runs()
        done = await asyncio.gather(*(one(program, trace) for program, trace in taken))
        return [trace for trace in done if trace is not None]

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
        # Field by field, not a deep copy (a tenth of a call's time): the projected values are
        # new containers, and the rest is immutable or copied here.
        projector = self.journal.projector
        steps = [
            record.model_copy(
                update={
                    "output": projector.for_trace(record.output),
                    "arguments": projector.for_trace(record.arguments),
                    "usage": None if record.usage is None else record.usage.model_copy(),
                }
            )
            for record in trace.steps
        ]
        return trace.model_copy(
            update={
                "steps": steps,
                "context": projector.for_trace(trace.context),
                "final_output": projector.for_trace(trace.final_output),
                "metrics": dataclasses.replace(trace.metrics),
                "state_hashes": list(trace.state_hashes),
            }
        )

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


def open_key_store(
    url: DatabaseUrl, keys_path: str | os.PathLike[str] | None = None
) -> KeyStorage | Path:
    """What `Vault.open` takes for the ledger at `url`: the key store file (SQLite: `keys_path`,
    else PATH.keys), or a connected PostgreSQL key store in the ledger's database."""
    if url.path is not None:
        return _given_or_beside(keys_path, url.path, KEYS_SUFFIX)
    from vault.postgres_store import PostgresKeyStore

    assert url.dsn is not None
    return PostgresKeyStore(url.dsn, schema=url.schema, where=str(url))


def load_kek_for(url: DatabaseUrl, kek_path: Path | None, storage: KeyStorage | Path) -> Kek:
    """The KEK of the key store `storage` of the ledger at `url` (see `_load_kek`)."""
    if isinstance(storage, Path):
        assert url.path is not None
        return _load_kek(kek_path, beside(url.path, KEK_SUFFIX), storage.exists(), str(url))
    return _load_kek(kek_path, None, storage.get_meta("kek_id") is not None, str(url))


@contextlib.asynccontextmanager
async def exclusive_lock(db: Path, wait_seconds: float = LOCK_WAIT_SECONDS) -> AsyncIterator[None]:
    """Hold PATH.lock exclusively: no other process writes to the SQLite ledger `db` meanwhile
    (LedgerBusyError after `wait_seconds` if some still do)."""
    fd = os.open(beside(db, LOCK_SUFFIX), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        await _flock(fd, fcntl.LOCK_EX, db, wait_seconds)
        yield
    finally:
        os.close(fd)


def default_origin(url: DatabaseUrl) -> str:
    return ORIGIN_PREFIX + url.database_name


def instance_id() -> str:
    """This process's name as a lease owner: host, pid and a random part (pids are reused)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


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


def _file_writable(path: Path) -> bool:
    # SQLite writes journal files beside the database, so the directory must be writable too.
    directory = os.path.dirname(os.path.abspath(path))
    return os.access(path, os.W_OK) and os.access(directory, os.W_OK)


def _load_kek(
    given: Path | None, beside_db: Path | None, key_store_exists: bool, where: str
) -> Kek:
    """The KEK from `given`, else LEDGERFLOW_KEK, else the file beside the database (SQLite).

    A missing file is created for a key store that does not exist yet, never for one that does.
    """
    if given is None and os.environ.get(KEK_ENV_VAR):
        return load_kek_env()
    path = given if given is not None else beside_db
    if path is None:
        raise WorkspaceError(
            f"the ledger {where} keeps no files beside it: give the vault's KEK with --kek FILE "
            f"(created if the key store is new) or {KEK_ENV_VAR}"
        )
    if path.exists():
        return load_kek_file(path)
    if key_store_exists:
        raise WorkspaceError(
            f"the key store of {where} exists but its KEK {path} does not; refusing to make a "
            f"new KEK, which could not read the secrets stored (give it with --kek or "
            f"{KEK_ENV_VAR})"
        )
    return generate_kek_file(path)


def _read_signer(path: Path) -> Signer | None:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except UnicodeDecodeError:
        raise WorkspaceError(f"signing key {path} is not text") from None
    return _signer(text, f"signing key {path}")


def _signer(text: str, source: str) -> Signer:
    try:
        return Signer.from_text(text.strip())
    except CheckpointError as exc:
        raise WorkspaceError(f"{source} is not a signer key: {exc}") from None


async def _load_signer(
    given: Path | None, beside_db: Path | None, origin: str, store: LedgerStore, where: str
) -> Signer:
    """The signer from `given`, else LEDGERFLOW_SIGNING_KEY, else the file beside the database
    (SQLite). A missing file is created for a ledger without envelopes, never for one that
    holds some."""
    env = os.environ.get(SIGNING_KEY_ENV)
    if given is None and env:
        return _signer(env, f"environment variable {SIGNING_KEY_ENV}")
    path = given if given is not None else beside_db
    if path is None:
        raise WorkspaceError(
            f"the ledger {where} keeps no files beside it: give the checkpoint signing key with "
            f"--signing-key FILE (created if the ledger is new) or {SIGNING_KEY_ENV}"
        )
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
