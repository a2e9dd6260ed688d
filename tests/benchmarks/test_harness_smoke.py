"""The comparative benchmark harness's own logic: statistics, tables, RESULTS.md, chart points.

Fast and offline: no anchor is installed or run here (benchmarks/run.py does that).
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path[:0] = [str(BENCHMARKS), str(BENCHMARKS / "anchors")]

import bench_common  # noqa: E402
from harness import envs, report, stats, workloads  # noqa: E402
from harness.workloads import SystemRuns, WorkloadRuns  # noqa: E402


def test_percentile_summary_and_formatting() -> None:
    values = [5.0, 1.0, 4.0, 2.0, 3.0]
    assert stats.percentile(values, 50) == 3.0
    assert stats.percentile(values, 0) == 1.0 and stats.percentile(values, 100) == 5.0
    assert stats.percentile([1.0, 2.0], 99) == pytest.approx(1.99)
    assert bench_common.percentile(values, 99) == stats.percentile(values, 99)
    summary = stats.summarize([3.0, 1.0, 2.0, 10.0])
    assert (summary.median, summary.min, summary.max, summary.n) == (2.5, 1.0, 10.0, 4)
    with pytest.raises(ValueError):
        stats.summarize([])
    with pytest.raises(ValueError):
        stats.percentile(values, 101)
    assert stats.number(12345.6) == "12,346"
    assert stats.number(123.45) == "123.5"
    assert stats.number(1.234) == "1.23"
    assert stats.number(0.012345) == "0.0123"
    assert stats.number(None) == "n/a"


def test_advantage_is_oriented_so_above_one_means_ledgerflow_is_better() -> None:
    assert stats.advantage(200.0, 100.0, higher_is_better=True) == 2.0  # twice the throughput
    assert stats.advantage(5.0, 10.0, higher_is_better=False) == 2.0  # half the latency
    assert stats.advantage(20.0, 10.0, higher_is_better=False) == 0.5  # slower: below 1
    assert stats.advantage(0.0, 10.0, higher_is_better=True) is None
    assert stats.ratio_text(2.0) == "2.00x" and stats.ratio_text(None) == "n/a"


def test_workloads_quick_sizes_and_selection() -> None:
    quick = {w.key: w for w in workloads.build(quick=True)}
    full = {w.key: w for w in workloads.build(quick=False)}
    assert quick["kernel"].spec["runs"] == 1_000 and full["kernel"].spec["runs"] == 10_000
    assert quick["kernel"].spec["concurrency"] == full["kernel"].spec["concurrency"] == 200
    assert {"long_1000", "long_3000"} <= set(quick) and {"long_1000", "long_10000"} <= set(full)
    assert quick["durable_seq"].spec["runs"] == 100 and full["durable_seq"].spec["runs"] == 1_000
    assert quick["durable_concurrent"].spec == {
        "workload": "durable",
        "runs": 200,
        "concurrency": 100,
    }
    assert quick["suspend_resume"].spec["resumes"] == 50
    assert quick["mcp_stdio"].spec["calls"] == quick["mcp_http"].spec["calls"] == 200
    assert full["mcp_http"].spec["calls"] == 1_000
    for workload in quick.values():
        assert workload.systems[0].runner == workloads.LEDGERFLOW
        keys = [system.key for system in workload.systems]
        assert len(keys) == len(set(keys)), workload.key
        for system in workload.systems:
            assert system.runner == workloads.LEDGERFLOW or system.runner in envs.SCRIPTS
    chosen = workloads.select(workloads.build(quick=True), "1,durable")
    assert [w.key for w in chosen] == ["kernel", "durable_seq", "durable_concurrent", "durable_pg"]
    assert quick["durable_pg"].spec["runs"] == 300 and full["durable_pg"].spec["runs"] == 1_200
    assert [s.params for s in quick["durable_pg"].systems[:2]] == [
        {"backend": "postgresql"},
        {"backend": "postgresql", "instances": 3},
    ]
    with pytest.raises(SystemExit):
        workloads.select(workloads.build(quick=True), "nothing-like-this")


def test_pins_are_exact_and_checked_against_pip_freeze() -> None:
    for name, pins in envs.PINS.items():
        assert pins and all("==" in pin for pin in pins), name
    assert envs.PINS["nano_vm"] == ("llm-nano-vm==0.8.9",)
    frozen = ["dbos==3.4.0", "SQLAlchemy==2.1.9"]
    assert envs._satisfied(("dbos==3.4.0",), frozen)
    assert not envs._satisfied(("dbos==3.3.0",), frozen)
    assert not envs._satisfied(("langgraph==1.2.24",), frozen)


def fake_runs() -> WorkloadRuns:
    workload = next(w for w in workloads.build(quick=True) if w.key == "durable_seq")
    runs = WorkloadRuns(workload, [SystemRuns(system) for system in workload.systems])
    settings = {"db": "journal_mode=wal, synchronous=FULL"}
    for system_runs, seconds in zip(runs.systems, (0.5, 1.0, 2.0), strict=False):
        system_runs.results = [
            {"runs": 100, "steps_per_run": 3, "seconds": seconds * factor, "settings": settings}
            for factor in (1.0, 0.9, 1.2)
        ]
    runs.systems[3].errors = ["exit 1, no result: boom"]
    runs.systems[4].skipped = "virtualenv langgraph unavailable: no network"
    return runs


def fake_ledger() -> list[dict[str, Any]]:
    system_runs = SystemRuns(workloads.LF)
    for value in (900.0, 1000.0, 1100.0):
        system_runs.results.append(
            {
                "rows": [
                    {
                        "measure": "appends, 1 writer, FULL (/s)",
                        "value": value,
                        "anchor": "sqlite3 (/s)",
                        "anchor_value": 2000.0,
                    },
                    {
                        "measure": "merkle: verify inclusion (µs)",
                        "value": 10.0,
                        "anchor": "floor (µs)",
                        "anchor_value": 5.0,
                    },
                    {"measure": "open (s)", "value": 0.1, "anchor": "", "anchor_value": None},
                ]
            }
        )
    return workloads.ledger_rows(system_runs)


def test_tables_ratios_and_failures() -> None:
    rows = report.compare_rows(fake_runs())
    by_system = {row[0]: row for row in rows}
    assert by_system["ledgerflow"][2] == "200.0" and by_system["ledgerflow"][5] == "(reference)"
    assert by_system["DBOS (WAL)"][2] == "100.0" and by_system["DBOS (WAL)"][5] == "2.00x"
    assert by_system['LangGraph (durability="sync")'][5] == "4.00x"
    failed = by_system["DBOS (default: rollback journal) [default setting]"]
    assert failed[2] == "failed" and "boom" in failed[5]
    skipped = by_system['LangGraph (default durability="async") [default setting]']
    assert "no network" in skipped[5]
    text = report.console_table(report.COMPARE_HEADERS, rows)
    assert "ledgerflow vs this (>1 = ledgerflow better)" in text.splitlines()[0]
    assert set(text.splitlines()[1]) <= {"-", " "}
    markdown = report.markdown_table(report.COMPARE_HEADERS, rows)
    assert markdown.splitlines()[1].startswith("| :--- | :--- | ---: |")

    ledger = fake_ledger()
    table = {row[0]: row for row in report.ledger_table(ledger)}
    assert table["appends, 1 writer, FULL (/s)"][1] == "1,000"
    assert table["appends, 1 writer, FULL (/s)"][6] == "0.50x"  # half the anchor's throughput
    assert table["merkle: verify inclusion (µs)"][6] == "0.50x"  # twice the anchor's time
    assert table["open (s)"][6] == ""


def test_chart_points_and_results_markdown() -> None:
    runs, ledger = fake_runs(), fake_ledger()
    points = report.chart_points([runs], ledger)
    labels = [point["label"] for point in points]
    assert any("vs DBOS (WAL)" in label for label in labels)
    assert not any("default durability" in label for label in labels)  # skipped: no result
    assert {point["kind"] for point in points} == {"matched", "floor"}
    assert report.point_color({"ratio": 0.5, "kind": "matched"}) == report.CHART_COLORS["worse"][0]
    json.dumps(points)  # handed to the report virtualenv as JSON

    meta = {
        "command": "python benchmarks/run.py --quick",
        "date": "2026-01-01 00:00 UTC",
        "mode": "--quick sizes",
        "repeat": 3,
        "wall_seconds": 12.0,
        "machine": {"cpu": "Test CPU", "cores": "2", "ram": "1 GiB"},
        "ledgerflow_python": sys.executable,
        "ledgerflow_versions": {"ledgerflow": "0.1.0"},
        "anchors": {
            "dbos": {"pins": ("dbos==3.4.0",), "error": "", "freeze": ["dbos==3.4.0"]},
            "langgraph": {"pins": ("langgraph==1.2.24",), "error": "no network", "freeze": []},
        },
        "chart": "chart skipped: matplotlib unavailable",
        "notes": ["a note"],
    }
    ledger_workload = next(w for w in workloads.build(quick=True) if w.kind == "ledger")
    ledger_runs = WorkloadRuns(ledger_workload, [SystemRuns(workloads.LF)])
    text = report.results_markdown(meta, [runs, ledger_runs], ledger)
    assert "pending the gateway" not in text
    assert "> 1 = ledgerflow better" in text and "Test CPU" in text
    assert "langgraph: **not available** — no network" in text
    assert "journal_mode=wal, synchronous=FULL" in text
    assert "### 3. durable, sequential" in text and "### 7. ledger" in text
    assert "dbos==3.4.0" in text and "chart skipped" in text


def test_run_bounded_keeps_the_concurrency_limit() -> None:
    in_flight, peak, done = 0, 0, []

    async def one(index: int) -> None:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0)
        in_flight -= 1
        done.append(index)

    asyncio.run(bench_common.run_bounded(50, 7, one))
    assert sorted(done) == list(range(50)) and peak == 7


def test_invoke_parses_the_result_line(tmp_path: Path) -> None:
    import run

    script = tmp_path / "fake_runner.py"
    script.write_text(
        "import json, sys\n"
        "spec = json.loads(sys.argv[1])\n"
        "print('library noise on stdout')\n"
        "print('BENCH_RESULT ' + json.dumps({'ok': True, 'echo': spec['n']}))\n"
    )
    result, error = run.invoke(sys.executable, script, {"n": 7}, timeout=60)
    assert error == "" and result is not None and result["echo"] == 7
    script.write_text("import sys\nprint('Traceback: kaput', file=sys.stderr)\nsys.exit(3)\n")
    result, error = run.invoke(sys.executable, script, {}, timeout=60)
    assert result is None and "exit 3" in error and "kaput" in error
