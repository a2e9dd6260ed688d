"""`ledgerflow migrate`: copy a ledger to another database (SQLite to PostgreSQL, or back)
with its chain, checkpoints, policies, run index, saved programs, tokens and vault, then
audit the copy.

The copy is exact, row for row: the same seqs, entry hashes and signed checkpoints (the origin
travels with the ledger, so every checkpoint still verifies with the key auditors hold), the
same ciphertexts under the same KEK (the vault's rows are copied, never decrypted). The target
must hold no ledger yet. Nothing may write to the source meanwhile: a SQLite source is locked
as `recover` locks it (every writer must be gone), and a source whose head moved during the
copy makes the migration fail.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from gateway.application.program_registry import ProgramRegistry
from gateway.application.witnesses import WitnessStore
from gateway.application.workspace import (
    WorkspaceError,
    exclusive_lock,
    load_kek_for,
    open_key_store,
)
from gateway.http.tokens import TokenStore
from governance.policy import PolicySnapshot
from governance.runs import RunStore
from governance.storage.connect import ledger_store, open_tables
from governance.storage.database import Database
from governance.storage.database_url import DatabaseUrl
from governance.storage.ledger_port import LedgerStore, envelope_of
from governance.storage.operational_tables import OperationalTables
from governance.verify import VerifyReport, verify_ledger
from vault import Vault
from vault.store import TABLE_COLUMNS

_BATCH = 1000
_GROUPS: tuple[type[OperationalTables], ...] = (RunStore, ProgramRegistry, TokenStore, WitnessStore)


class MigrationError(WorkspaceError):
    """The ledger cannot be copied as asked (a target that is not empty, a source in use)."""


@dataclass
class MigrationReport:
    source: str
    target: str
    envelopes: int = 0
    checkpoints: int = 0
    policies: int = 0
    keys: int = 0
    rows: dict[str, int] = field(default_factory=dict)  # operational table -> rows copied
    vault_rows: dict[str, int] = field(default_factory=dict)
    audit: VerifyReport | None = None


async def migrate(
    source: DatabaseUrl,
    target: DatabaseUrl,
    *,
    kek_path: str | os.PathLike[str] | None = None,
    source_keys: str | os.PathLike[str] | None = None,
    target_keys: str | os.PathLike[str] | None = None,
) -> MigrationReport:
    """Copy the ledger at `source` into the empty database `target` and audit the copy with the
    verifier keys the ledger records. `kek_path` (else LEDGERFLOW_KEK, else the source's
    PATH.kek) must open the source's key store; the target's key store is keyed by it too."""
    if source == target:
        raise MigrationError(f"--from and --to are the same database ({source})")
    report = MigrationReport(str(source), str(target))
    async with contextlib.AsyncExitStack() as stack:
        if source.path is not None:
            if not source.path.is_file():
                raise MigrationError(f"no ledger at {source}")
            await stack.enter_async_context(exclusive_lock(source.path, 0.0))
        origin_store = await stack.enter_async_context(_opened(ledger_store(source, readonly=True)))
        copy_store = await stack.enter_async_context(_opened(ledger_store(target)))
        if await copy_store.head() is not None:
            raise MigrationError(
                f"the target {target} holds a ledger already: migrate into an empty one"
            )
        head = await origin_store.head()
        await _copy_ledger(origin_store, copy_store, report)
        await _copy_tables(source, target, report, stack)
        _copy_vault(source, target, kek_path, source_keys, target_keys, report)
        if await origin_store.head() != head:
            raise MigrationError(
                f"the source {source} changed during the copy: stop every instance writing to "
                "it, then migrate again into an empty target"
            )
        keys = await origin_store.list_keys()
        report.audit = await verify_ledger(copy_store, keys or None)
    return report


@contextlib.asynccontextmanager
async def _opened(store: LedgerStore) -> AsyncIterator[LedgerStore]:
    await store.open()
    try:
        yield store
    finally:
        await store.close()


async def _copy_ledger(origin: LedgerStore, copy: LedgerStore, report: MigrationReport) -> None:
    stored_origin = await origin.get_origin()
    if stored_origin is not None:
        await copy.set_origin(stored_origin)
    keys = await origin.list_keys()
    await copy.add_keys(keys)
    report.keys = len(keys)
    for policy_hash, body in await origin.list_policies():
        policy = PolicySnapshot.model_validate_json(body)
        if await copy.put_policy(policy) != policy_hash:
            raise MigrationError(f"policy {policy_hash} does not hash to its key: audit the source")
        report.policies += 1
    batch = []
    async for row in origin.scan():
        batch.append(envelope_of(row))
        if len(batch) == _BATCH:
            await copy.append_batch(batch)
            report.envelopes += len(batch)
            batch = []
    if batch:
        await copy.append_batch(batch)
        report.envelopes += len(batch)
    for checkpoint in await origin.list_checkpoints():
        await copy.save_checkpoint(checkpoint)
        report.checkpoints += 1


async def _copy_tables(
    source: DatabaseUrl,
    target: DatabaseUrl,
    report: MigrationReport,
    stack: contextlib.AsyncExitStack,
) -> None:
    """Row for row, by column name (a source written by an older ledgerflow may lack columns
    added since: they take their defaults)."""
    origin = await stack.enter_async_context(open_tables(source))
    copy = await stack.enter_async_context(open_tables(target))
    for group in _GROUPS:
        await stack.enter_async_context(group(copy))  # creates the target's tables
        if not await origin.table_exists(group.VERSION_TABLE):
            continue  # the source never had them (no token was ever made, say)
        for table in group.TABLES:
            report.rows[table] = await _copy_rows(origin, copy, table)


async def _copy_rows(origin: Database, copy: Database, table: str) -> int:
    existing = await copy.fetchone(f"SELECT count(*) FROM {table}")
    if existing is not None and existing[0]:
        raise MigrationError(f"the target's {table} holds rows: migrate into an empty database")
    wanted = set(await copy.columns(table))
    columns = [name for name in await origin.columns(table) if name in wanted]
    rows = await origin.fetch(f"SELECT {', '.join(columns)} FROM {table}")
    insert = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
    async with copy.transaction() as tx:
        for row in rows:
            await tx.execute(insert, row)
    return len(rows)


def _copy_vault(
    source: DatabaseUrl,
    target: DatabaseUrl,
    kek_path: str | os.PathLike[str] | None,
    source_keys: str | os.PathLike[str] | None,
    target_keys: str | os.PathLike[str] | None,
    report: MigrationReport,
) -> None:
    origin_storage = open_key_store(source, source_keys)
    if isinstance(origin_storage, Path) and not origin_storage.exists():
        return  # no secret was ever sealed
    kek_file = None if kek_path is None else Path(kek_path)
    kek = load_kek_for(source, kek_file, origin_storage)
    with Vault.open(origin_storage, kek) as origin:
        rows = {table: origin.store.dump(table) for table in TABLE_COLUMNS}
    copy_storage = open_key_store(target, target_keys)
    with Vault.open(copy_storage, kek) as copy:
        if any(copy.store.dump(table) for table in TABLE_COLUMNS):
            raise MigrationError("the target's key store holds keys: migrate into an empty one")
        copy.store.load(rows)
    report.vault_rows = {table: len(found) for table, found in rows.items()}
