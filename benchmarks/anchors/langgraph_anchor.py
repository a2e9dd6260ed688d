"""LangGraph anchor (run inside benchmarks/.venvs/langgraph): workloads 3, 4 and 5.

A workflow is a StateGraph of no-op nodes (START -> a -> b -> c -> END) compiled with a SQLite
checkpointer; each run is its own thread_id. Durability is the `durability` argument of
invoke/ainvoke: "sync" writes each step's checkpoint before the next step starts (ledgerflow's
guarantee), "async" (LangGraph's default) writes it while the next step runs, "exit" only at the
end. Both savers put their connection in WAL mode; neither sets `synchronous`, so SQLite's
default (FULL) applies -- read back from the saver's own connection below.

  sequential (workload 3) and suspend/resume (5): SqliteSaver over one sqlite3 connection,
      sync nodes, graph.invoke;
  concurrent (workload 4): AsyncSqliteSaver over one aiosqlite connection shared by all
      concurrent runs (it serialises them with its lock), async nodes, graph.ainvoke.
Suspend/resume: a node calls `interrupt(...)`; the run is resumed with
`invoke(Command(resume=event), same thread)`, which re-runs that node and continues.
"""

from __future__ import annotations

import asyncio
import sqlite3
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any, TypedDict

import bench_common as common
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver
from langgraph.graph import END, START, StateGraph
from langgraph.types import Command, interrupt


class State(TypedDict, total=False):
    n: int
    event: Any


def versions() -> dict[str, str]:
    names = ("langgraph", "langgraph-checkpoint", "langgraph-checkpoint-sqlite", "aiosqlite")
    return {name: metadata.version(name) for name in names}


def node(state: State) -> None:
    return common.noop()


async def async_node(state: State) -> None:
    return common.noop()


def wait_node(state: State) -> dict[str, Any]:
    return {"event": interrupt("waiting for the event")}


def chain(names: list[str], nodes: dict[str, Any]) -> StateGraph:
    graph = StateGraph(State)
    for name in names:
        graph.add_node(name, nodes[name])
    for before, after in zip([START, *names], [*names, END], strict=True):
        graph.add_edge(before, after)
    return graph


def durable_graph(fn: Any) -> StateGraph:
    return chain(["a", "b", "c"], {"a": fn, "b": fn, "c": fn})


def describe(observed: dict[str, str], durability: str, saver: str) -> dict[str, str]:
    return {
        "checkpointer": (
            f"{saver}, journal_mode={observed['journal_mode']}, "
            f"synchronous={observed['synchronous']} (SQLite default; the saver sets none)"
        ),
        "durability": durability,
    }


def config(thread: int) -> dict[str, Any]:
    return {"configurable": {"thread_id": f"run-{thread}"}}


def durable_sequential(spec: dict[str, Any], path: Path) -> dict[str, Any]:
    runs, durability = int(spec["runs"]), spec.get("durability", "sync")
    connection = sqlite3.connect(path, check_same_thread=False)
    saver = SqliteSaver(connection)
    saver.setup()
    app = durable_graph(node).compile(checkpointer=saver)
    try:
        app.invoke({"n": 0}, config(-1), durability=durability)  # warm-up
        with common.Stopwatch() as watch:
            for index in range(runs):
                app.invoke({"n": 0}, config(index), durability=durability)
        observed = common.sqlite_settings(connection)
    finally:
        connection.close()
    return {"seconds": watch.seconds, "settings": describe(observed, durability, "SqliteSaver")}


def durable_concurrent(spec: dict[str, Any], path: Path) -> dict[str, Any]:
    runs, concurrency = int(spec["runs"]), int(spec["concurrency"])
    durability = spec.get("durability", "sync")

    async def measure() -> dict[str, Any]:
        async with AsyncSqliteSaver.from_conn_string(str(path)) as saver:
            app = durable_graph(async_node).compile(checkpointer=saver)

            async def one(index: int) -> None:
                await app.ainvoke({"n": 0}, config(index), durability=durability)

            await one(-1)  # warm-up
            with common.Stopwatch() as watch:
                await common.run_bounded(runs, concurrency, one)
            observed = {}
            for pragma in ("journal_mode", "synchronous"):
                async with saver.conn.execute(f"PRAGMA {pragma}") as cursor:
                    row = await cursor.fetchone()
                assert row is not None
                observed[pragma] = str(row[0])
            observed["synchronous"] = common.SYNCHRONOUS_NAMES.get(
                int(observed["synchronous"]), observed["synchronous"]
            )
        return {
            "seconds": watch.seconds,
            "settings": describe(observed, durability, "AsyncSqliteSaver (one, shared)"),
        }

    return asyncio.run(measure())


def durable(spec: dict[str, Any]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(dir=spec.get("dir")) as tmp:
        path = Path(tmp) / "checkpoints.sqlite"
        if int(spec["concurrency"]) > 1:
            result = durable_concurrent(spec, path)
        else:
            result = durable_sequential(spec, path)
    result.update(runs=int(spec["runs"]), steps_per_run=common.DURABLE_STEPS)
    return result


def suspend_resume(spec: dict[str, Any]) -> dict[str, Any]:
    resumes, durability = int(spec["resumes"]), spec.get("durability", "sync")
    latencies: list[float] = []
    with tempfile.TemporaryDirectory(dir=spec.get("dir")) as tmp:
        connection = sqlite3.connect(Path(tmp) / "checkpoints.sqlite", check_same_thread=False)
        saver = SqliteSaver(connection)
        saver.setup()
        graph = chain(["a", "wait", "b"], {"a": node, "wait": wait_node, "b": node})
        app = graph.compile(checkpointer=saver)

        def cycle(thread: int, record: bool) -> None:
            first = app.invoke({"n": 0}, config(thread), durability=durability)
            if "__interrupt__" not in first:
                raise RuntimeError(f"run did not suspend: {first!r}")
            with common.Stopwatch() as watch:
                done = app.invoke(
                    Command(resume=common.RESUME_EVENT), config(thread), durability=durability
                )
            if done.get("event") != common.RESUME_EVENT or "__interrupt__" in done:
                raise RuntimeError(f"resumed run ended with {done!r}")
            if record:
                latencies.append(watch.seconds * 1000)

        try:
            cycle(-1, record=False)  # warm-up
            for index in range(resumes):
                cycle(index, record=True)
            observed = common.sqlite_settings(connection)
        finally:
            connection.close()
    return {
        "settings": describe(observed, durability, "SqliteSaver"),
        "latencies_ms": latencies,
        "p50_ms": common.percentile(latencies, 50),
        "p99_ms": common.percentile(latencies, 99),
    }


if __name__ == "__main__":
    common.main({"durable": durable, "suspend_resume": suspend_resume}, versions)
