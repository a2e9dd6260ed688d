"""Gateway instances sharing one PostgreSQL database, as a deployment behind a load balancer
runs them: runs started on one instance are resumed through another, one instance is killed
with SIGKILL mid-run and the survivors take its runs over once their leases expire, and two
instances racing to resume one run continue it once.

LEDGERFLOW_CLUSTER_RUNS sets the number of runs of the kill test (300 by default).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.durable.cluster import Cluster, Instance, call, hook, mcp, read_effects
from tests.durable.cluster_tools import HANGING, PROGRAM
from tests.postgres import admin, as_role

RUNS = int(os.environ.get("LEDGERFLOW_CLUSTER_RUNS", "300"))
PATH = ["prepare", "gate", "work", "finish"]


@pytest.fixture
def cluster(pg_url: str, pg_role: str, tmp_path: Path) -> Iterator[Cluster]:
    made = Cluster(as_role(pg_url, pg_role), tmp_path)
    init = made.cli("db", "init", "--app-role", pg_role, db=pg_url)  # as the owner
    assert init.returncode == 0, init.stderr
    try:
        yield made
    finally:
        made.close()


def query(schema: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with admin() as connection:
        connection.execute(f"SET search_path TO {schema}")
        return connection.execute(sql, params).fetchall()  # type: ignore[arg-type]


def statuses(schema: str) -> dict[str, str]:
    return dict(query(schema, "SELECT trace_id, status FROM lf_runs"))  # type: ignore[arg-type]


async def start_runs(instance: Instance, count: int) -> list[str]:
    """`count` runs started on `instance` (over one MCP session), each suspended at its gate."""
    slots = asyncio.Semaphore(8)
    async with mcp(instance) as client:

        async def one() -> str:
            async with slots:
                run = await call(client, "run_program", program=PROGRAM)
            assert run["status"] == "SUSPENDED", run
            return str(run["trace_id"])

        return list(await asyncio.gather(*(one() for _ in range(count))))


async def deliver(
    http: httpx.AsyncClient, schema: str, order: list[Instance], trace_id: str
) -> None:
    """Deliver the run's approval as a webhook sender behind a load balancer does: to the next
    live instance, again on a connection error or a refusal, until it is accepted (or the run
    is seen finished: its first delivery reached an instance that died after resuming it)."""
    deadline = time.monotonic() + 120
    while True:
        for instance in order:
            if not instance.alive:
                continue
            try:
                response = await hook(http, instance, trace_id, {"id": f"ok-{trace_id}"})
            except httpx.TransportError:
                continue
            if response.status_code == 200:
                return
            assert response.status_code == 409, response.text
        status = await asyncio.to_thread(
            query, schema, "SELECT status FROM lf_runs WHERE trace_id = %s", trace_id
        )
        if status == [("SUCCESS",)]:
            return
        assert time.monotonic() < deadline, f"{trace_id} never accepted its event ({status})"
        await asyncio.sleep(0.3)


async def kill_mid_run(victim: Instance, schema: str, at_least: int = 3) -> list[str]:
    """SIGKILL `victim` once it is in the middle of `at_least` runs: RUNNING on it, their
    resume recorded (only a take-over can finish those: no event will come for them again).
    Returns the runs it was in the middle of when it died."""
    mid_run = (
        "SELECT trace_id FROM lf_runs WHERE status = 'RUNNING' AND owner LIKE %s "
        "AND trace_id IN (SELECT execution_id FROM envelopes WHERE kind = 'resume')"
    )
    owner = f"%:{victim.process.pid}:%"
    while True:
        if len(await asyncio.to_thread(query, schema, mid_run, owner)) >= at_least:
            break
        await asyncio.sleep(0.01)
    victim.kill()
    return [trace for (trace,) in await asyncio.to_thread(query, schema, mid_run, owner)]


async def wait_all_succeed(schema: str, traces: list[str]) -> dict[str, str]:
    deadline = time.monotonic() + 90
    while True:
        found = await asyncio.to_thread(statuses, schema)
        if all(found.get(t) == "SUCCESS" for t in traces) or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.2)


async def test_runs_survive_an_instance_killed_mid_run(cluster: Cluster, pg_schema: str) -> None:
    instances = [cluster.start(name) for name in ("a", "b", "c")]
    cluster.wait_ready()
    victim = instances[1]
    share = [RUNS // 3 + (1 if n < RUNS % 3 else 0) for n in range(3)]
    started = await asyncio.gather(
        *(start_runs(i, k) for i, k in zip(instances, share, strict=True))
    )
    origin = {trace: n for n, traces in enumerate(started) for trace in traces}
    traces = list(origin)

    slots = asyncio.Semaphore(30)
    async with httpx.AsyncClient() as http:

        async def resume(trace_id: str) -> None:
            first = (origin[trace_id] + 1) % 3  # never the instance that suspended it
            async with slots:
                await deliver(http, pg_schema, instances[first:] + instances[:first], trace_id)

        killer = asyncio.create_task(kill_mid_run(victim, pg_schema))
        await asyncio.gather(*(resume(t) for t in traces))
        mid_run = await killer
    final = await wait_all_succeed(pg_schema, traces)

    assert len(traces) == RUNS
    assert mid_run, "the victim was killed before it had resumed any run"
    assert {t: final.get(t) for t in traces} == dict.fromkeys(traces, "SUCCESS")
    # Every step ran once, except one in flight on the victim when it died: that one ran again
    # on a survivor, and the ledger kept the survivor's execution.
    effects = read_effects(cluster.effects)
    recorded = {
        (trace, step): output
        for trace, step, output in query(
            pg_schema,
            "SELECT execution_id, step_id, payload FROM envelopes WHERE kind = 'step'",
        )
    }
    retried = []
    for trace in traces:
        for step in PATH:
            ran = effects[trace, step]
            assert 1 <= len(ran) <= 2 and ran.count("b") <= 1, (trace, step, ran)
            assert len([name for name in ran if name != "b"]) <= 1, (trace, step, ran)
            if len(ran) == 2:
                assert ran[0] == "b" and ran[1] != "b", (trace, step, ran)
                assert f'"by":"{ran[1]}"' in recorded[trace, step], recorded[trace, step]
                retried.append((trace, step))
    # The runs the victim was in the middle of were taken over and finished by a survivor.
    for trace in mid_run:
        assert effects[trace, "finish"][-1] in ("a", "c"), (trace, effects[trace, "finish"])
    # The ledger holds each step once, in one gapless chain that verifies with the key.
    per_step = query(
        pg_schema,
        "SELECT execution_id, step_id, status, count(*) FROM envelopes "
        "WHERE kind IN ('step', 'resume') GROUP BY 1, 2, 3 HAVING count(*) > 1",
    )
    assert per_step == []
    [(count, last)] = query(pg_schema, "SELECT count(*), max(seq) FROM envelopes")
    assert count == last + 1
    key = cluster.cli("pubkey")
    assert key.returncode == 0, key.stderr
    verified = cluster.cli("verify", "--key", key.stdout.strip())
    assert verified.returncode == 0 and "result       OK" in verified.stdout, verified.stdout


async def test_two_instances_racing_to_resume_continue_each_run_once(
    cluster: Cluster, pg_schema: str
) -> None:
    first, second = cluster.start("a"), cluster.start("c")
    cluster.wait_ready()
    traces = await start_runs(first, 100)
    slots = asyncio.Semaphore(10)
    outcomes: dict[str, list[tuple[int, str]]] = {}
    async with httpx.AsyncClient() as http:

        async def race(n: int, trace_id: str) -> None:
            # Half the races deliver the same event to both, half two different events.
            events = (
                [{"id": f"e-{trace_id}"}] * 2
                if n % 2
                else [{"id": f"e{i}-{trace_id}"} for i in (1, 2)]
            )
            async with slots:
                responses = await asyncio.gather(
                    hook(http, first, trace_id, events[0]), hook(http, second, trace_id, events[1])
                )
            outcomes[trace_id] = [
                (r.status_code, r.json().get("status", r.json().get("error", "")))
                for r in responses
            ]

        await asyncio.gather(*(race(n, t) for n, t in enumerate(traces)))
    effects = read_effects(cluster.effects)
    final = statuses(pg_schema)
    for n, trace in enumerate(traces):
        assert final[trace] == "SUCCESS"
        assert len(effects[trace, "work"]) == 1, (trace, effects[trace, "work"])
        won = [o for o in outcomes[trace] if o == (200, "SUCCESS")]
        lost = [o for o in outcomes[trace] if o != (200, "SUCCESS")]
        assert len(won) == 1, outcomes[trace]
        [(code, said)] = lost
        assert code == 409 or (n % 2 and (code, said) == (200, "duplicate")), outcomes[trace]


async def test_a_run_executing_on_one_instance_is_cancelled_through_another(
    cluster: Cluster, pg_schema: str
) -> None:
    executing, other = cluster.start("a"), cluster.start("c")
    cluster.wait_ready()
    async with mcp(executing) as client_a, mcp(other) as client_c:
        running = asyncio.create_task(call(client_a, "run_program", program=HANGING))
        while True:  # until the run is in its hanging step on the first instance
            if any(step == "hang" for _, step in read_effects(cluster.effects)):
                break
            await asyncio.sleep(0.05)
        [(trace_id,)] = query(pg_schema, "SELECT trace_id FROM lf_runs")
        cancelled = await call(client_c, "cancel_run", trace_id=trace_id, reason="operator")
        assert cancelled["status"] == "CANCELLED", cancelled
        finished = await asyncio.wait_for(running, 30)
    assert finished["status"] == "CANCELLED" and "operator" in (finished["error"] or "")
    assert (trace_id, "finish") not in read_effects(cluster.effects)
    assert statuses(pg_schema) == {trace_id: "CANCELLED"}
