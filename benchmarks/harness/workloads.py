"""The workloads: what runs, on which systems, with which settings, and what is reported.

Every system of a workload receives the same spec (program shape, number of runs, concurrency),
merged with that system's own parameters (its durability variant). The program shapes and tool
bodies themselves live in benchmarks/anchors/bench_common.py, shared by every runner.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from harness.stats import summarize

Result = dict[str, Any]

LEDGERFLOW = "ledgerflow"


@dataclass(frozen=True)
class System:
    key: str
    label: str
    runner: str  # "ledgerflow" or an anchor's virtualenv name (harness.envs.PINS)
    params: dict[str, Any] = field(default_factory=dict)
    # Whether the durability setting matches ledgerflow's; False marks the system's own default
    # where it differs (measured too, for information).
    matched: bool = True
    # The machine's limit (benchmarks/floors.py), not a peer: in the tables, not in the chart.
    floor: bool = False


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    higher_is_better: bool
    extract: Callable[[Result], float]
    chart: bool = True

    @property
    def direction(self) -> str:
        return "higher is better" if self.higher_is_better else "lower is better"


@dataclass(frozen=True)
class Workload:
    key: str
    number: str
    title: str
    description: str
    spec: dict[str, Any]
    systems: tuple[System, ...]
    metrics: tuple[Metric, ...] = ()
    notes: tuple[str, ...] = ()
    kind: str = "compare"  # "compare", or "ledger" (ledger_bench's own rows and anchors)
    short: str = ""  # for the chart's labels

    @property
    def tag(self) -> str:
        return f"{self.number}. {self.short or self.title}"


@dataclass
class SystemRuns:
    """Every repetition of one system on one workload."""

    system: System
    results: list[Result] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    skipped: str = ""

    def values(self, metric: Metric) -> list[float]:
        return [metric.extract(result) for result in self.results]

    def first(self, key: str) -> Any:
        for result in self.results:
            if key in result:
                return result[key]
        return None


@dataclass
class WorkloadRuns:
    workload: Workload
    systems: list[SystemRuns]

    def ledgerflow(self) -> SystemRuns | None:
        for runs in self.systems:
            if runs.system.runner == LEDGERFLOW:
                return runs
        return None


# -- metrics -----------------------------------------------------------------------------------


def _runs_per_second(result: Result) -> float:
    return float(result["runs"]) / float(result["seconds"])


def _steps_per_second(result: Result) -> float:
    return float(result["runs"]) * float(result["steps_per_run"]) / float(result["seconds"])


def _microseconds_per_step(result: Result) -> float:
    steps = float(result["runs"]) * float(result["steps_per_run"])
    return float(result["seconds"]) / steps * 1e6


def _mib(key: str) -> Callable[[Result], float]:
    return lambda result: float(result[key]) / 1024


def _rss_growth(result: Result) -> float:
    return (float(result["rss_kib"]) - float(result["rss_before_kib"])) / 1024


def _field(key: str) -> Callable[[Result], float]:
    return lambda result: float(result[key])


RUNS_PER_S = Metric("runs_per_s", "runs/s", True, _runs_per_second)
WORKFLOWS_PER_S = Metric("workflows_per_s", "workflows/s", True, _runs_per_second)
# The same ratio as steps/s when every workflow has the same steps: shown, not charted twice.
WORKFLOWS_PER_S_TOO = Metric("workflows_per_s", "workflows/s", True, _runs_per_second, False)
STEPS_PER_S = Metric("steps_per_s", "steps/s", True, _steps_per_second)
US_PER_STEP = Metric("us_per_step", "µs/step (wall clock)", False, _microseconds_per_step, False)
TOTAL_S = Metric("seconds", "time: load + run (s)", False, _field("seconds"))
RUN_S = Metric("run_seconds", "time: run only (s)", False, _field("run_seconds"), False)
LOAD_S = Metric(
    "load_seconds", "time: Program.from_dict only (s)", False, _field("load_seconds"), False
)
PEAK_RSS = Metric("rss_mib", "peak RSS (MiB)", False, _mib("rss_kib"))
RSS_GROWTH = Metric("rss_growth_mib", "peak RSS above start (MiB)", False, _rss_growth, False)
P50 = Metric("p50_ms", "resume→done p50 (ms)", False, _field("p50_ms"))
P99 = Metric("p99_ms", "resume→done p99 (ms)", False, _field("p99_ms"))
CALLS_PER_S = Metric("calls_per_s", "calls/s", True, _runs_per_second)
CALL_P50 = Metric("call_p50_ms", "call p50 (ms)", False, _field("p50_ms"))
CALL_P99 = Metric("call_p99_ms", "call p99 (ms)", False, _field("p99_ms"))


# -- systems -----------------------------------------------------------------------------------

LF = System(LEDGERFLOW, "ledgerflow", LEDGERFLOW, {"synchronous": "FULL"})
NANO = System("nano_vm", "llm-nano-vm", "nano_vm")
DBOS_WAL = System("dbos_wal", "DBOS (WAL)", "dbos", {"journal": "wal"})
DBOS_DEFAULT = System(
    "dbos_default", "DBOS (default: rollback journal)", "dbos", {"journal": "default"}, False
)
LG_SYNC = System(
    "langgraph_sync", 'LangGraph (durability="sync")', "langgraph", {"durability": "sync"}
)
LG_ASYNC = System(
    "langgraph_async",
    'LangGraph (default durability="async")',
    "langgraph",
    {"durability": "async"},
    False,
)
DURABLE_FLOOR = System(
    "floor_sqlite",
    "floor: bare sqlite3, WAL, FULL, 1 + 3 commits per workflow",
    LEDGERFLOW,
    {"floor": True},
    floor=True,
)
MCP_FLOOR = System(
    "floor_mcp",
    "floor: no-op tool on mcp.server.MCPServer",
    LEDGERFLOW,
    {"floor": True},
    floor=True,
)
DURABLE_SYSTEMS = (LF, DBOS_WAL, LG_SYNC, DBOS_DEFAULT, LG_ASYNC)
# nano-vm-mcp's store fixes WAL + synchronous=NORMAL (no fsync per commit): it cannot be matched
# to ledgerflow's FULL, so it is marked as its own default setting.
NANO_MCP = System("nano_vm_mcp", "nano-vm-mcp (WAL, synchronous=NORMAL)", "nano_vm_mcp", {}, False)
# ledgerflow at nano-vm-mcp's durability, for the matched comparison.
LF_NORMAL = System(
    "ledgerflow_normal", "ledgerflow (synchronous=NORMAL)", LEDGERFLOW, {"synchronous": "NORMAL"}
)
NANO_MCP_MATCHED = System("nano_vm_mcp", "nano-vm-mcp (WAL, synchronous=NORMAL)", "nano_vm_mcp", {})

MCP_NOTES = (
    "The same MCP tool call repeated: `run_program` with a program of condition steps only "
    "(check -> yes -> done; 3 steps executed, checked on every call; literal conditions, as "
    "nano-vm-mcp's run_program takes no context), one call at a time over one client session, "
    "after a warm-up; server start-up, MCP initialisation and the warm-up are not timed. "
    "nano-vm-mcp needs `is_terminal` on its last condition (ledgerflow rejects it on conditions "
    "and ends after the last step instead): the executed steps are the same.",
    "Durability per call: ledgerflow records the run's envelopes and an `access` envelope in its "
    "SQLite ledger (WAL, synchronous=FULL: fsync on every commit). nano-vm-mcp persists the "
    "program, the full trace, a state-context row, transition statistics and a governance "
    "envelope in its SQLite store, one commit each, in WAL with synchronous=NORMAL (no fsync per "
    "commit; its store sets this and offers no option).",
    "Clients: ledgerflow is driven by the mcp 2.x client in ledgerflow's virtualenv; "
    "nano-vm-mcp by the mcp<2 client in its own virtualenv (it does not import with mcp 2.x).",
)

MCP_STDIO = (
    "MCP round trip, stdio",
    "sequential `run_program` calls (after {warmup} untimed) from an MCP client to the server it "
    "started as a subprocess (stdio); calls/s and the latency of each call as the client sees it.",
)
MCP_HTTP = (
    "MCP round trip, HTTP",
    "sequential `run_program` calls (after {warmup} untimed) over loopback HTTP with a bearer "
    "token: ledgerflow `serve --transport http` (Streamable HTTP, token from `ledgerflow token "
    "create`), nano-vm-mcp `--transport sse` (its only HTTP transport; key from "
    "NANO_VM_MCP_API_KEY).",
)
MCP_NORMAL_NOTE = (
    "Matched durability: ledgerflow served with `--synchronous normal`, WAL with no fsync per "
    "commit, as nano-vm-mcp's store; both survive a process crash, neither a power loss."
)


def mcp_workloads(calls: int, warmup: int) -> list[Workload]:
    """Workload 6 over stdio and HTTP: ledgerflow at FULL against nano-vm-mcp and the floor,
    then ledgerflow at NORMAL against nano-vm-mcp at the same level."""
    workloads = []
    for transport, (title, description) in (("stdio", MCP_STDIO), ("http", MCP_HTTP)):
        spec = {"workload": "mcp_round_trip", "transport": transport, "calls": calls}
        spec["warmup"] = warmup
        text = f"{calls:,} " + description.format(warmup=warmup)
        short = f"MCP {transport if transport == 'stdio' else 'HTTP'}"
        workloads.append(
            Workload(
                f"mcp_{transport}",
                "6",
                title,
                text,
                spec,
                (LF, NANO_MCP, MCP_FLOOR),
                (CALLS_PER_S, CALL_P50, CALL_P99),
                MCP_NOTES,
                short=short,
            )
        )
        workloads.append(
            Workload(
                f"mcp_{transport}_normal",
                "6",
                f"{title}, ledgerflow at synchronous=NORMAL",
                text,
                spec,
                (LF_NORMAL, NANO_MCP_MATCHED),
                (CALLS_PER_S, CALL_P50, CALL_P99),
                (MCP_NORMAL_NOTE, *MCP_NOTES[::2]),
                short=f"{short} NORMAL",
            )
        )
    return workloads


LF_PG = System(
    "ledgerflow_pg", "ledgerflow, PostgreSQL, 1 instance", LEDGERFLOW, {"backend": "postgresql"}
)
LF_PG3 = System(
    "ledgerflow_pg3",
    "ledgerflow, PostgreSQL, 3 instances",
    LEDGERFLOW,
    {"backend": "postgresql", "instances": 3},
)
LF_SQLITE = System("ledgerflow_sqlite", "ledgerflow, SQLite (WAL, FULL)", LEDGERFLOW)
DBOS_PG = System("dbos_pg", "DBOS, PostgreSQL", "dbos", {"backend": "postgresql"})
POSTGRES_NOTES = (
    "One PostgreSQL 15 server on loopback (LEDGERFLOW_BENCH_POSTGRES), synchronous_commit=on "
    "and fsync=on: every commit is flushed to the server's WAL before it is acknowledged, the "
    "match of SQLite's FULL. ledgerflow: a fresh schema per repetition; DBOS: a fresh system "
    "database per repetition (it creates its own).",
    "3 instances: three processes, each with its own pool, Ledger and run index over the same "
    "schema, as three serve-http instances behind a load balancer; each runs a third of the "
    "workflows with a third of the concurrency; the time is from the first start to the last "
    "finish. Every append takes the one chain-head lock, so instances add availability, not "
    "commits per second; on this 2-core machine they also compete for the CPU with the server.",
)

DURABILITY_NOTE = (
    "Matched durability: every step committed with fsync before the next starts, SQLite in WAL "
    "mode with synchronous=FULL (ledgerflow, DBOS (WAL), LangGraph sync). Rows marked with a "
    "default setting are that system's out-of-the-box behaviour, measured for information."
)


def build(quick: bool) -> list[Workload]:
    """The workloads at full or --quick size."""
    kernel_runs = 1_000 if quick else 10_000
    horizons = (1_000, 3_000) if quick else (1_000, 10_000)
    sequential_runs = 100 if quick else 1_000
    concurrent_runs = 200 if quick else 1_000
    resumes = 50 if quick else 500
    slow_resumes = 5 if quick else 20
    mcp_calls = 200 if quick else 1_000
    mcp_warmup = 20
    pg_runs = 300 if quick else 1_200
    pg_resumes = 50 if quick else 300
    workloads = [
        Workload(
            "kernel",
            "1",
            "kernel in memory",
            f"{kernel_runs:,} runs of a 5-step program (tool, tool, condition, tool, tool; no-op "
            "tools, no LLM), 200 runs in flight at once, in memory (no journal).",
            {"workload": "kernel", "runs": kernel_runs, "concurrency": 200},
            (LF, NANO),
            (RUNS_PER_S, US_PER_STEP),
            short="kernel",
            notes=(
                "Both kernels execute the same 5 steps per run (checked on every run). "
                "llm-nano-vm re-parses the condition on every evaluation; ledgerflow parses it "
                "once at load time but hashes every step (state hash chain).",
            ),
        )
    ]
    for steps in horizons:
        workloads.append(
            Workload(
                f"long_{steps}",
                "2",
                f"long horizon, {steps:,} steps",
                f"One run of a linear program of {steps:,} no-op tool steps, in a fresh "
                "process per repetition; time = Program.from_dict + run; peak RSS = ru_maxrss "
                "of that process (interpreter and imports included).",
                {"workload": "long_horizon", "steps": steps},
                (LF, NANO),
                (TOTAL_S, RUN_S, LOAD_S, PEAK_RSS, RSS_GROWTH),
                short=f"{steps:,} steps",
            )
        )
    workloads += [
        Workload(
            "durable_seq",
            "3",
            "durable, sequential",
            f"{sequential_runs:,} runs, one after another, of a workflow of 3 no-op tool steps, "
            "each step committed (fsync) before the next.",
            {"workload": "durable", "runs": sequential_runs, "concurrency": 1},
            (*DURABLE_SYSTEMS, DURABLE_FLOOR),
            (WORKFLOWS_PER_S,),
            (DURABILITY_NOTE,),
            short="durable seq.",
        ),
        Workload(
            "durable_concurrent",
            "4",
            "durable, 100 concurrent",
            f"{concurrent_runs:,} runs of the same 3-step workflow, 100 in flight at once, in "
            "one process over one database.",
            {"workload": "durable", "runs": concurrent_runs, "concurrency": 100},
            DURABLE_SYSTEMS,
            (STEPS_PER_S, WORKFLOWS_PER_S_TOO),
            short="durable x100",
            notes=(
                DURABILITY_NOTE,
                "LangGraph: concurrent ainvoke calls over ONE AsyncSqliteSaver (supported; it "
                "serialises its connection with a lock). DBOS: concurrent async workflow calls "
                "in one event loop.",
            ),
        ),
        Workload(
            "suspend_resume",
            "5",
            "suspend / resume",
            f"A workflow (tool, suspending tool, tool) suspends; an external event resumes it. "
            f"Latency from delivering the event to the completed run, over {resumes} resumes "
            "per repetition, one at a time; p50/p99 per repetition.",
            {"workload": "suspend_resume", "resumes": resumes},
            (
                LF,
                System(
                    "dbos_fastpoll",
                    "DBOS (WAL, recv poll 10 ms)",
                    "dbos",
                    {"journal": "wal", "poll": 0.01},
                ),
                System("langgraph_sync", 'LangGraph (durability="sync")', "langgraph"),
                System(
                    "dbos_default",
                    "DBOS (defaults: rollback journal, recv poll 1 s)",
                    "dbos",
                    {"journal": "default", "resumes": slow_resumes},
                    False,
                ),
            ),
            (P50, P99),
            short="resume",
            notes=(
                "ledgerflow: vm.run -> SUSPENDED (a tool returned PENDING), then "
                "vm.resume(trace_id, event), which claims the run in the run index and "
                "rebuilds it from the ledger. DBOS: the workflow waits in "
                "DBOS.recv_async; DBOS.send_async delivers the event. LangGraph: a node calls "
                "interrupt(); invoke(Command(resume=event)) continues the thread.",
                "DBOS on SQLite has no LISTEN/NOTIFY: recv learns of a message by polling "
                "(notification_listener_polling_interval_sec, default 1.0 s). Its default is "
                f"measured over {slow_resumes} resumes per repetition only (about 1 s each).",
            ),
        ),
        *mcp_workloads(mcp_calls, mcp_warmup),
        Workload(
            "ledger",
            "7",
            "ledger (ledgerflow only)",
            "benchmarks/ledger_bench.py's own measurements, imported and run as they are "
            "(appends/s FULL and NORMAL x 1 and 100 writers, verify, open, proof bundles, "
            "Merkle inclusion proofs at "
            + ("100,000" if quick else "1,000,000")
            + " entries), each against its own anchor measured in the same process.",
            {"workload": "ledger", "quick": quick},
            (LF,),
            kind="ledger",
            short="ledger",
        ),
        Workload(
            "durable_pg",
            "8",
            "durable on PostgreSQL, 100 concurrent",
            f"{pg_runs:,} runs of the 3-step durable workflow, 100 in flight at once, on "
            "PostgreSQL (1 and 3 ledgerflow instances, DBOS) and, for reference, ledgerflow on "
            "its SQLite file.",
            {"workload": "durable", "runs": pg_runs, "concurrency": 100},
            (LF_PG, LF_PG3, LF_SQLITE, DBOS_PG),
            (WORKFLOWS_PER_S,),
            POSTGRES_NOTES,
            short="durable PG",
        ),
        Workload(
            "resume_pg",
            "9",
            "resume on PostgreSQL",
            f"Suspend, then resume by an event to completion, {pg_resumes} times one at a time; "
            "ledgerflow resumed through the same instance and through another instance (a "
            "second Ledger and pool over the same database), DBOS by send/recv.",
            {"workload": "suspend_resume", "resumes": pg_resumes},
            (
                LF_PG,
                System(
                    "ledgerflow_pg_other",
                    "ledgerflow, PostgreSQL, resumed through another instance",
                    LEDGERFLOW,
                    {"backend": "postgresql", "through": "another"},
                ),
                LF_SQLITE,
                DBOS_PG,
            ),
            (P50, P99),
            POSTGRES_NOTES[:1],
            short="resume PG",
        ),
    ]
    return workloads


def select(workloads: list[Workload], only: str | None) -> list[Workload]:
    """Workloads named by --only: comma-separated keys, numbers or title words."""
    if not only:
        return workloads
    wanted = [part.strip().lower() for part in only.split(",") if part.strip()]

    def matches(workload: Workload, name: str) -> bool:
        if name.isdigit():
            return name == workload.number
        key = workload.key.lower()
        return key == name or key.startswith(name) or name in workload.title.lower().split()

    chosen = [w for w in workloads if any(matches(w, name) for name in wanted)]
    if not chosen:
        names = ", ".join(sorted({w.key for w in workloads} | {w.number for w in workloads}))
        raise SystemExit(f"--only {only!r} matches no workload; choose from: {names}")
    return chosen


def ledger_rows(runs: SystemRuns) -> list[dict[str, Any]]:
    """ledger_bench's rows aggregated over repetitions (same measures in every repetition)."""
    by_measure: dict[str, dict[str, Any]] = {}
    for result in runs.results:
        for row in result["rows"]:
            entry = by_measure.setdefault(
                row["measure"], {"measure": row["measure"], "anchor": row["anchor"], "values": []}
            )
            entry["values"].append((row["value"], row["anchor_value"]))
    rows = []
    for entry in by_measure.values():
        values = [value for value, _ in entry["values"]]
        anchors = [anchor for _, anchor in entry["values"] if anchor]
        unit = entry["measure"].rsplit("(", 1)[-1].rstrip(")") if "(" in entry["measure"] else ""
        rows.append(
            {
                "measure": entry["measure"],
                "unit": unit,
                "summary": summarize(values),
                "anchor": entry["anchor"],
                "anchor_summary": summarize(anchors) if anchors else None,
            }
        )
    return rows
