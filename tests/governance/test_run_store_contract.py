"""The run index on both backends, as several instances share it: a resume's claim and an
idempotency key are won once whoever races for them, leases pass to another instance only
when they expire, due timers are shared out instead of fired twice, and an index written by
an older ledgerflow is migrated in place."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import pytest

from governance.runs import RunStore
from governance.storage.connect import open_tables
from governance.storage.database_url import DatabaseUrl

PROGRAM = {"name": "p", "steps": []}


async def _instances(db: str, count: int, stack: AsyncExitStack) -> list[RunStore]:
    """`count` run stores over `db`, each with connections of its own (as processes have)."""
    stores = []
    for _ in range(count):
        tables = await stack.enter_async_context(open_tables(DatabaseUrl.parse(db)))
        stores.append(await stack.enter_async_context(RunStore(tables)))
    return stores


@pytest.fixture
async def two(ledger_db: str) -> AsyncIterator[list[RunStore]]:
    async with AsyncExitStack() as stack:
        yield await _instances(ledger_db, 2, stack)


async def _start(runs: RunStore, trace_id: str, **lease: object) -> None:
    started = RunStore.started_statements(
        trace_id,
        "h" * 64,
        "p",
        PROGRAM,
        1.0,
        {},
        "i" * 64,
        **lease,  # type: ignore[arg-type]
    )
    await runs.write(started)


async def _suspend(runs: RunStore, trace_id: str, wake_at: float | None = None) -> None:
    await runs.write(
        [RunStore.status_statement(trace_id, "SUSPENDED", 2.0, suspended_step="s", wake_at=wake_at)]
    )


@pytest.mark.parametrize("riding", [False, True], ids=["flushed", "riding"])
async def test_a_claim_is_won_once_whoever_races_for_it(two: list[RunStore], riding: bool) -> None:
    first, second = two
    ids = [f"run-{n}" for n in range(30)]
    for trace_id in ids:
        await _start(first, trace_id)
        await _suspend(first, trace_id)
    outcomes = await asyncio.gather(
        *(
            store.claim(trace_id, 3.0, riding=riding)
            for trace_id in ids
            for store in (first, second)
        )
    )
    for n in range(len(ids)):
        assert sorted(outcomes[2 * n : 2 * n + 2]) == [False, True]
    assert {row.trace_id for row in await second.with_status("RUNNING")} == set(ids)


async def test_an_idempotency_key_is_bound_once(two: list[RunStore]) -> None:
    first, second = two
    results = await asyncio.gather(
        *(
            store.claim_key("key-1", "fp", f"trace-{n}", 5.0, 3600)
            for n, store in enumerate((first, second) * 4)
        )
    )
    winners = [n for n, bound in enumerate(results) if bound is None]
    assert len(winners) == 1
    assert all(bound == (f"trace-{winners[0]}", "fp") for bound in results if bound is not None)
    # An expired binding may be taken again.
    assert await first.claim_key("key-1", "fp2", "trace-new", 5.0 + 3601, 3600) is None


async def test_a_lease_passes_to_another_instance_only_when_it_expires(
    two: list[RunStore],
) -> None:
    first, second = two
    await _start(first, "r1", owner="A", lease_until=110.0)
    assert await second.take_over("B", now=105.0, lease_until=120.0) == []
    assert await first.renew("A", lease_until=130.0) == {"r1": None}
    assert await second.take_over("B", now=125.0, lease_until=140.0) == []
    assert await second.take_over("B", now=131.0, lease_until=146.0) == ["r1"]
    assert await first.renew("A", lease_until=150.0) == {}  # A learns it lost the run
    assert await second.renew("B", lease_until=150.0) == {"r1": None}
    # A cancel asked through the first instance reaches the owner at its next renewal.
    assert await first.request_cancel("r1", "operator")
    assert await second.renew("B", lease_until=150.0) == {"r1": "operator"}
    # A run that ends holds no lease: nobody takes it over, and renewing does not keep it.
    await second.write([RunStore.status_statement("r1", "SUCCESS", 151.0)])
    assert await second.renew("B", lease_until=160.0) == {}
    assert await first.take_over("A", now=500.0, lease_until=600.0) == []


async def test_runs_without_a_lease_are_taken_over_at_once(two: list[RunStore]) -> None:
    first, second = two
    await _start(first, "legacy")  # written without leases (a SQLite-era or migrated row)
    taken = await asyncio.gather(
        first.take_over("A", now=1.0, lease_until=10.0),
        second.take_over("B", now=1.0, lease_until=10.0),
    )
    assert sorted(map(len, taken)) == [0, 1]


async def test_due_timers_are_shared_out_between_instances(two: list[RunStore]) -> None:
    first, second = two
    ids = [f"t-{n:02d}" for n in range(20)]
    for n, trace_id in enumerate(ids):
        await _start(first, trace_id)
        await _suspend(first, trace_id, wake_at=10.0 + n)
    mine, theirs = await asyncio.gather(
        first.due(100.0, owner="A", lease_until=115.0),
        second.due(100.0, owner="B", lease_until=115.0),
    )
    assert sorted(mine + theirs) == ids and not set(mine) & set(theirs)
    assert mine == sorted(mine) and theirs == sorted(theirs)  # by wake time
    # Reserved timers stay with their instance until the reservation lapses.
    assert await second.due(110.0, owner="B", lease_until=125.0) == sorted(theirs)
    assert await second.due(120.0, owner="B", lease_until=135.0) == ids
    # Without an owner (one process), every due timer is listed.
    assert await first.due(15.0) == ids[:6]


async def test_a_version_1_run_index_is_migrated_in_place(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    with sqlite3.connect(path) as connection:  # the tables as the first release made them
        connection.executescript(
            """
            CREATE TABLE lf_runs_schema (version INTEGER NOT NULL) STRICT;
            INSERT INTO lf_runs_schema VALUES (1);
            CREATE TABLE lf_programs (hash TEXT PRIMARY KEY, name TEXT NOT NULL,
                body TEXT NOT NULL) STRICT;
            CREATE TABLE lf_runs (trace_id TEXT PRIMARY KEY, program_hash TEXT NOT NULL
                REFERENCES lf_programs(hash), status TEXT NOT NULL, started_at REAL NOT NULL,
                updated_at REAL NOT NULL, context TEXT NOT NULL, initial_hash TEXT NOT NULL,
                suspended_step TEXT, cursor TEXT, wake_at REAL, error TEXT) STRICT;
            INSERT INTO lf_programs VALUES ('h', 'p', '{}');
            INSERT INTO lf_runs VALUES ('old', 'h', 'RUNNING', 1, 1, '{}', 'i', NULL, NULL,
                NULL, NULL);
            """
        )
    async with RunStore.in_file(path) as runs:
        assert await runs.stored_version() == RunStore.version() == 3
        assert await runs.take_over("A", now=5.0, lease_until=20.0) == ["old"]
