"""The LedgerStore contract, on both stores: SQLite files and PostgreSQL schemas. What one store
promises (order, all-or-none batches, refusals, queries, checkpoints, read-only opening), the
other keeps; what only one of them has (pragmas, raw-driver triggers, roles) is tested beside it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from governance.checkpoint import Signer
from governance.envelope import EnvelopeKind, GovernanceEnvelope
from governance.errors import ChainError, LedgerError
from governance.ledger import Ledger
from governance.policy import PolicySnapshot
from governance.storage.connect import ledger_store
from governance.storage.ledger_port import EnvelopeQuery, LedgerStore
from governance.verify import verify_ledger_at
from tests.governance.ledger_rows import ORIGIN, POLICY, Checkpoints, chain


@asynccontextmanager
async def _opened(db: str, *, readonly: bool = False) -> AsyncIterator[LedgerStore]:
    store = ledger_store(db, readonly=readonly)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture
async def store(ledger_db: str) -> AsyncIterator[LedgerStore]:
    async with _opened(ledger_db) as opened:
        await opened.put_policy(POLICY)
        yield opened


def test_both_stores_satisfy_the_protocol(ledger_db: str) -> None:
    assert isinstance(ledger_store(ledger_db), LedgerStore)


async def test_append_read_scan_head(store: LedgerStore) -> None:
    assert await store.head() is None
    envelopes = chain(5)
    await store.append_batch(envelopes[:2])
    await store.append_batch(envelopes[2:])
    assert await store.head() == envelopes[-1]
    assert await store.read_range(1, 4) == envelopes[1:4]
    rows = [row async for row in store.scan(2)]
    assert [row.seq for row in rows] == [2, 3, 4]
    assert rows[0].payload == '{"seq":2,"x":0.5}'
    assert rows[0].entry_hash == bytes.fromhex(envelopes[2].entry_hash)
    hashes = [h async for h in store.entry_hashes()]
    assert hashes == [bytes.fromhex(e.entry_hash) for e in envelopes]
    assert [h async for h in store.entry_hashes(1, 3)] == hashes[1:3]


async def test_scan_pages_through_large_logs(store: LedgerStore) -> None:
    envelopes = chain(4500)
    await store.append_batch(envelopes)
    assert [row.seq async for row in store.scan()] == list(range(4500))
    assert [row.seq async for row in store.scan(1999, 4001)] == list(range(1999, 4001))


async def test_batch_out_of_line_is_refused_whole(store: LedgerStore) -> None:
    envelopes = chain(4)
    await store.append_batch(envelopes[:2])
    # A batch whose second envelope skips a seq: the first must not be stored either.
    with pytest.raises(ChainError, match="seq must be"):
        await store.append_batch([envelopes[2], chain(1, start=4, prev=envelopes[3].entry_hash)[0]])
    assert (await store.head()) == envelopes[1]
    with pytest.raises(ChainError, match="prev_hash"):
        await store.append_batch(chain(1, start=2, prev="ab" * 32))
    with pytest.raises(ChainError, match="seq must be"):
        await store.append_batch(envelopes[1:2])  # a replay of a stored envelope
    await store.append_batch(envelopes[2:])
    assert (await store.head()) == envelopes[3]


@pytest.mark.parametrize("size", [3, 1200])
async def test_bad_row_inside_a_batch_refuses_it_whole(store: LedgerStore, size: int) -> None:
    # 1200 rows take several INSERT statements in one transaction; 3 take one statement.
    envelopes = chain(size)
    middle = size // 2
    envelopes[middle] = chain(1, start=middle, prev="ab" * 32)[0]
    with pytest.raises(ChainError, match="prev_hash"):
        await store.append_batch(envelopes)
    assert await store.head() is None
    await store.append_batch(chain(size))
    assert [h async for h in store.entry_hashes()] == [
        bytes.fromhex(e.entry_hash) for e in chain(size)
    ]


async def test_queries(store: LedgerStore) -> None:
    other = PolicySnapshot(name="other")
    await store.put_policy(other)
    first = chain(6)
    second = chain(2, start=6, prev=first[-1].entry_hash, policy_hash=other.policy_hash)
    third = chain(1, start=8, prev=second[-1].entry_hash, kind="denied", execution_id="run-9")
    await store.append_batch([*first, *second, *third])

    async def seqs(**filters: Any) -> list[int]:
        return [e.seq for e in await store.query(EnvelopeQuery(**filters))]

    assert await seqs() == list(range(9))
    assert await seqs(execution_id="run-1") == [1, 3, 5, 7]
    assert await seqs(kind=EnvelopeKind.DENIED) == [8]
    assert await seqs(policy_hash=other.policy_hash) == [6, 7]
    assert await seqs(since=1_000_020, until=1_000_050) == [2, 3, 4]
    assert await seqs(execution_id="run-0", limit=2, offset=1) == [2, 4]
    assert await seqs(start_seq=7) == [7, 8]
    assert await seqs(execution_id="nobody") == []


async def test_policies_keys_and_origin(store: LedgerStore) -> None:
    assert await store.put_policy(POLICY) == POLICY.policy_hash  # idempotent
    assert await store.get_policy(POLICY.policy_hash) == POLICY
    assert await store.get_policy("00" * 32) is None
    assert await store.list_policies() == [(POLICY.policy_hash, POLICY.canonical_bytes().decode())]
    keys = [Signer.generate(f"k{i}").verifier().to_text() for i in range(2)]
    await store.add_keys(keys)
    await store.add_keys(keys[:1])
    assert sorted(await store.list_keys()) == sorted(keys)
    assert await store.get_origin() is None
    await store.set_origin(ORIGIN)
    await store.set_origin(ORIGIN)
    with pytest.raises(LedgerError, match="belongs to origin"):
        await store.set_origin("another.example/log")


async def test_checkpoints_are_append_only_and_grow(store: LedgerStore) -> None:
    envelopes = chain(4)
    await store.append_batch(envelopes)
    checkpoints = Checkpoints(envelopes)
    assert await store.last_checkpoint() is None
    await store.save_checkpoint(checkpoints.record(0, 2))
    with pytest.raises(ChainError, match="more entries"):
        await store.save_checkpoint(checkpoints.record(1, 2))
    with pytest.raises(ChainError, match="not stored"):
        await store.save_checkpoint(checkpoints.record(1, 5))
    with pytest.raises(ChainError, match="idx"):
        await store.save_checkpoint(checkpoints.record(2, 3))
    await store.save_checkpoint(checkpoints.record(1, 4))
    assert await store.list_checkpoints() == [checkpoints.record(0, 2), checkpoints.record(1, 4)]
    assert await store.last_checkpoint() == checkpoints.record(1, 4)


async def test_append_after_takes_in_what_another_writer_appended(ledger_db: str) -> None:
    first, second = ledger_store(ledger_db), ledger_store(ledger_db)
    await first.open()
    await second.open()
    try:
        await first.put_policy(POLICY)
        envelopes = chain(5)
        await first.append_batch(envelopes[:3])
        seen: list[list[int]] = []

        def seal(newcomers: list[GovernanceEnvelope]) -> list[GovernanceEnvelope]:
            seen.append([e.seq for e in newcomers])
            return envelopes[3:]

        # The second store last looked at an empty log: it is told about seqs 0-2 first.
        newcomers, sealed = await second.append_after(0, seal)
        # (The SQLite store seals once optimistically, before it knows of them.)
        assert seen[-1] == [0, 1, 2] and seen[:-1] in ([], [[]])
        assert newcomers == envelopes[:3] and sealed == envelopes[3:]
        assert await first.head() == envelopes[4]
        # A seal that ignores the newcomers is refused by the store, not stored out of line.
        with pytest.raises(ChainError):
            await first.append_after(0, lambda _: chain(1))
        assert [row.seq async for row in first.scan()] == list(range(5))
    finally:
        await first.close()
        await second.close()


async def test_ledgers_of_one_database_interleave_into_one_gapless_chain(ledger_db: str) -> None:
    # Two writers (two connections or pools, as two processes would have) appending at once.
    signer = Signer.generate("contract")
    ledgers = [
        await Ledger.open(ledger_store(ledger_db), signer=signer, origin=ORIGIN) for _ in range(2)
    ]
    try:
        appended = await asyncio.gather(
            *(
                ledger.append(f"run-{n}", EnvelopeKind.STEP, step_id=f"s{i}", payload={"i": i})
                for i in range(60)
                for n, ledger in enumerate(ledgers)
            )
        )
        assert sorted(e.seq for e in appended) == list(range(120))
        report = await ledgers[0].verify()
        assert report.ok and report.entries_checked == 120, report
    finally:
        for ledger in ledgers:
            await ledger.close()
    # Both cut a checkpoint on close (the second finds the first's and covers as much or more).
    report = await verify_ledger_at(ledger_db, [signer.verifier().to_text()], origin=ORIGIN)
    assert report.ok and report.checkpoints_checked >= 1, report


async def test_readonly_store_reads_and_refuses_writes(ledger_db: str) -> None:
    async with _opened(ledger_db) as store:
        await store.put_policy(POLICY)
        await store.append_batch(chain(2))
    async with _opened(ledger_db, readonly=True) as reader:
        assert (await reader.head()) == chain(2)[1]
        with pytest.raises(LedgerError, match="read-only"):
            await reader.append_batch(chain(1, start=2, prev=chain(2)[1].entry_hash))
        assert [row.seq async for row in reader.scan()] == [0, 1]


async def test_closed_store_refuses_use(ledger_db: str) -> None:
    store = ledger_store(ledger_db)
    with pytest.raises(LedgerError, match="not open"):
        await store.head()
    await store.open()
    await store.close()
    with pytest.raises(LedgerError, match="not open"):
        await store.append_batch(chain(1))


async def test_ledgers_cutting_checkpoints_at_once_both_succeed(ledger_db: str) -> None:
    signer = Signer.generate("contract")
    ledgers = [
        await Ledger.open(ledger_store(ledger_db), signer=signer, origin=ORIGIN) for _ in range(2)
    ]
    try:
        for round_ in range(10):
            await asyncio.gather(
                *(
                    ledger.append(f"r{n}", EnvelopeKind.STEP, payload={"i": round_})
                    for n, ledger in enumerate(ledgers)
                )
            )
            cut = await asyncio.gather(*(ledger.checkpoint() for ledger in ledgers))
            assert all(record is not None for record in cut)
        indexes = [c.index for c in await ledgers[0].store.list_checkpoints()]
        assert indexes == list(range(len(indexes))) and len(indexes) >= 10
    finally:
        for ledger in ledgers:
            await ledger.close()
    report = await verify_ledger_at(ledger_db, [signer.verifier().to_text()], origin=ORIGIN)
    assert report.ok, report


async def test_a_ledger_opens_while_another_appends_and_checkpoints(ledger_db: str) -> None:
    signer = Signer.generate("contract")
    writer = await Ledger.open(ledger_store(ledger_db), signer=signer, origin=ORIGIN)
    stop = asyncio.Event()

    async def keep_writing() -> None:
        n = 0
        while not stop.is_set():
            await writer.append("busy", EnvelopeKind.STEP, payload={"n": n})
            n += 1
            if n % 5 == 0:
                await writer.checkpoint()

    await writer.append("busy", EnvelopeKind.STEP, payload={"n": -1})
    busy = asyncio.create_task(keep_writing())
    try:
        for _ in range(15):  # each open reads a log that grows under it
            reader = await Ledger.open(
                ledger_store(ledger_db), signer=signer, origin=ORIGIN, checkpoint_on_close=False
            )
            assert reader.size >= 1
            await reader.close()
    finally:
        stop.set()
        await busy
        await writer.close()
    assert (await verify_ledger_at(ledger_db, [signer.verifier().to_text()], origin=ORIGIN)).ok
