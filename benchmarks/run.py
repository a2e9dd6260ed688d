"""ledgerflow against other workflow runtimes, on the same machine, in the same run.

    python benchmarks/run.py [--quick] [--only NAME[,NAME]] [--repeat N] [--dir DIR] [--out FILE]

Workloads (benchmarks/harness/workloads.py): 1 kernel in memory and 2 long horizon (vs
llm-nano-vm), 3 durable sequential, 4 durable 100 concurrent and 5 suspend/resume (vs DBOS on
SQLite and LangGraph + SqliteSaver), 6 MCP round trip over stdio and over HTTP (vs nano-vm-mcp,
each driven by an MCP client), 7 the ledger (benchmarks/ledger_bench.py, with its own anchors),
8 durable and 9 resume on PostgreSQL (1 and 3 ledgerflow instances vs DBOS on the same server;
LEDGERFLOW_BENCH_POSTGRES names it, default postgres@127.0.0.1:5432/test).

Anchors are installed from PyPI at pinned versions into benchmarks/.venvs/<name> on first use
(progress is printed; later runs reuse them) and run as subprocesses: this process imports none
of them. Systems alternate run by run (A B C A B C ...), each repetition in a fresh process;
default 5 repetitions, --quick 3 at smaller sizes (under 3 minutes once the virtualenvs exist;
it asserts nothing about speed). Prints one table per workload (median, min, max, and
ledgerflow's ratio to each anchor, > 1 = ledgerflow better), and writes benchmarks/RESULTS.md
and benchmarks/results.png (matplotlib, from the benchmarks/.venvs/report virtualenv).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import sqlite3
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

BENCHMARKS = Path(__file__).resolve().parent
REPO = BENCHMARKS.parent
sys.path.insert(0, str(BENCHMARKS))

from harness import envs, report, stats  # noqa: E402
from harness.workloads import (  # noqa: E402
    LEDGERFLOW,
    SystemRuns,
    Workload,
    WorkloadRuns,
    build,
    ledger_rows,
    select,
)

RESULT_MARKER = "BENCH_RESULT "
RESULTS_MD = BENCHMARKS / "RESULTS.md"
RESULTS_PNG = BENCHMARKS / "results.png"


def log(message: str) -> None:
    print(message, flush=True)


# -- the machine -------------------------------------------------------------------------------


def _proc_field(path: str, name: str) -> str | None:
    try:
        for line in Path(path).read_text().splitlines():
            if line.lower().startswith(name.lower()) and ":" in line:
                return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return None


def machine() -> dict[str, str]:
    memory = _proc_field("/proc/meminfo", "MemTotal")
    ram = "unknown"
    if memory and memory.split()[0].isdigit():
        ram = f"{int(memory.split()[0]) / 1024**2:.1f} GiB (MemTotal {memory})"
    return {
        "cpu": _proc_field("/proc/cpuinfo", "model name") or platform.processor() or "unknown",
        "cores": f"{os.cpu_count()} (os.cpu_count())",
        "ram": ram,
        "os": platform.platform(),
        "python": f"{platform.python_implementation()} {platform.python_version()} "
        "(every virtualenv is made from the same base interpreter)",
        "sqlite": f"{sqlite3.sqlite_version} (the library every system's sqlite3 module uses)",
    }


def ledgerflow_versions() -> dict[str, str]:
    found = {}
    for name in ("ledgerflow", "pydantic", "rfc8785", "cryptography"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


# -- running one repetition --------------------------------------------------------------------


def invoke(
    python: str, script: Path, spec: dict[str, Any], timeout: float
) -> tuple[dict[str, Any] | None, str]:
    """Run one repetition in a fresh process; (result, "") or (None, why)."""
    try:
        done = subprocess.run(
            [python, str(script), json.dumps(spec)],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=REPO,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout:.0f} s"
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_MARKER)]
    if not lines:
        tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-4:])
        return None, f"exit {done.returncode}, no result: {tail[-400:]}"
    result: dict[str, Any] = json.loads(lines[-1][len(RESULT_MARKER) :])
    if not result.get("ok"):
        return None, str(result.get("error", "failed"))
    return result, ""


def describe(workload: Workload, result: dict[str, Any]) -> str:
    if workload.kind == "ledger":
        return f"{len(result['rows'])} measures"
    parts = []
    for metric in workload.metrics[:2]:
        parts.append(f"{stats.number(metric.extract(result))} {metric.label}")
    return ", ".join(parts)


def run_workload(
    workload: Workload,
    environments: dict[str, envs.Env],
    repeat: int,
    directory: str | None,
    timeout: float,
) -> WorkloadRuns:
    runs = WorkloadRuns(workload, [SystemRuns(system) for system in workload.systems])
    for system_runs in runs.systems:
        runner = system_runs.system.runner
        if runner != LEDGERFLOW and not environments[runner].ok:
            system_runs.skipped = f"virtualenv {runner} unavailable: {environments[runner].error}"
            log(f"  skipping {system_runs.system.label}: {system_runs.skipped}")
    width = max(len(system_runs.system.label) for system_runs in runs.systems)
    for repetition in range(1, repeat + 1):
        for system_runs in runs.systems:
            system = system_runs.system
            if system_runs.skipped:
                continue
            if system.runner == LEDGERFLOW:
                python, script = sys.executable, envs.LEDGERFLOW_RUNNER
            else:
                python, script = str(envs.venv_python(system.runner)), envs.SCRIPTS[system.runner]
            spec = {**workload.spec, **system.params, "dir": directory}
            started = time.perf_counter()
            result, error = invoke(python, script, spec, timeout)
            elapsed = time.perf_counter() - started
            if result is None:
                system_runs.errors.append(error)
                text = f"FAILED: {error[:200]}"
            else:
                system_runs.results.append(result)
                text = describe(workload, result)
            log(f"  rep {repetition}/{repeat}  {system.label:<{width}}  {text}  [{elapsed:.1f} s]")
    return runs


def print_tables(runs: WorkloadRuns, ledger: list[dict[str, Any]]) -> None:
    workload = runs.workload
    log(f"\n== {workload.number}. {workload.title} ==")
    if workload.kind == "ledger":
        if ledger:
            log(report.console_table(report.LEDGER_HEADERS, report.ledger_table(ledger)))
        else:
            log("no result: " + "; ".join(runs.systems[0].errors[:1]))
    else:
        log(report.console_table(report.COMPARE_HEADERS, report.compare_rows(runs)))
    log("")


def make_chart(points: list[dict[str, Any]], title: str, chart: Path = RESULTS_PNG) -> str:
    """Draw the chart at `chart`; returns the Markdown line for RESULTS.md (or why not)."""
    if not points:
        return "No ratios to chart."
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        environment = envs.ensure("report", log)
        if not environment.ok:
            message = f"chart skipped: matplotlib unavailable ({environment.error})"
            log(message)
            return message
        assert environment.python is not None
        script = BENCHMARKS / "harness" / "report.py"
        done = subprocess.run(
            [str(environment.python), str(script), "--chart", str(chart)],
            input=json.dumps({"points": points, "title": title}),
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if done.returncode != 0:
            message = f"chart skipped: the report virtualenv failed: {done.stderr.strip()[-300:]}"
            log(message)
            return message
    else:
        report.plot(points, chart, title)
    log(f"wrote {chart}")
    return (
        f"![ledgerflow's advantage per metric and anchor]({chart.name})\n\n"
        "Bars: ledgerflow's advantage (log scale; > 1 = ledgerflow better). Green/red: matched "
        "durability; grey: the anchor at its own default setting."
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n", 2)[2],
    )
    parser.add_argument("--quick", action="store_true", help="smaller sizes, 3 repetitions")
    parser.add_argument(
        "--only", help="workloads to run: keys, numbers or title words, comma-separated"
    )
    parser.add_argument("--repeat", type=int, help="repetitions per system (default 5; --quick 3)")
    parser.add_argument("--dir", help="where the database files go (default: the system temp dir)")
    parser.add_argument(
        "--out",
        type=Path,
        default=RESULTS_MD,
        help="the results file (default: benchmarks/RESULTS.md); its chart goes beside it (.png)",
    )
    args = parser.parse_args()
    repeat = args.repeat or (3 if args.quick else 5)
    if repeat < 1:
        parser.error("--repeat must be at least 1")
    if args.dir is not None:
        # Created here, once: every workload would otherwise fail on its first database file.
        try:
            Path(args.dir).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            parser.error(f"--dir {args.dir}: cannot create it: {exc.strerror or exc}")
    started = time.perf_counter()
    command = "python benchmarks/run.py" + "".join(f" {shlex.quote(a)}" for a in sys.argv[1:])
    chosen = select(build(args.quick), args.only)
    timeout = 600.0 if args.quick else 3600.0

    needed = sorted({s.runner for w in chosen for s in w.systems} - {LEDGERFLOW})
    log(f"{command}: {len(chosen)} workload(s), {repeat} repetitions, anchors: {needed or 'none'}")
    environments: dict[str, envs.Env] = {}
    for name in needed:
        log(f"anchor virtualenv {name}: {' '.join(envs.PINS[name])}")
        environments[name] = envs.ensure(name, log)
        if not environments[name].ok:
            log(f"  UNAVAILABLE: {environments[name].error}")

    all_runs: list[WorkloadRuns] = []
    ledger: list[dict[str, Any]] = []
    for workload in chosen:
        log(f"\n[{workload.number}] {workload.title}: {workload.description}")
        runs = run_workload(workload, environments, repeat, args.dir, timeout)
        if workload.kind == "ledger" and runs.systems[0].results:
            ledger = ledger_rows(runs.systems[0])
        print_tables(runs, ledger)
        all_runs.append(runs)

    notes = []
    for runs in all_runs:
        for system_runs in runs.systems:
            if system_runs.errors:
                notes.append(
                    f"{runs.workload.number}. {runs.workload.title}, {system_runs.system.label}: "
                    f"{len(system_runs.errors)} of {repeat} repetitions failed."
                )
    date = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    points = report.chart_points(all_runs, ledger)
    results = Path(args.out)
    chart_path = RESULTS_PNG if results == RESULTS_MD else results.with_suffix(".png")
    chart = make_chart(points, f"ledgerflow vs anchors — {command} — {date}", chart_path)
    meta = {
        "command": command,
        "date": date,
        "mode": "--quick sizes" if args.quick else "full sizes",
        "repeat": repeat,
        "wall_seconds": time.perf_counter() - started,
        "machine": machine(),
        "ledgerflow_python": sys.executable,
        "ledgerflow_versions": ledgerflow_versions(),
        "anchors": {
            name: {"pins": envs.PINS[name], "error": env.error, "freeze": env.freeze}
            for name, env in environments.items()
        },
        "chart": chart,
        "notes": notes,
    }
    results.write_text(report.results_markdown(meta, all_runs, ledger))
    log(f"wrote {results} ({time.perf_counter() - started:.0f} s in all)")


if __name__ == "__main__":
    main()
