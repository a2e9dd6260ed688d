"""Tables (console and Markdown), RESULTS.md and the ratio chart.

Ratios are always ledgerflow's advantage: > 1 means ledgerflow is better on that metric, whatever
its direction (throughput: ledgerflow / anchor; time, latency, memory: anchor / ledgerflow).

The chart needs matplotlib, which is not one of ledgerflow's dependencies: `plot` imports it
lazily, and this file also runs as a script inside the `report` virtualenv:

    benchmarks/.venvs/report/bin/python benchmarks/harness/report.py --chart OUT.png < points.json
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script (the chart, in the report virtualenv)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.stats import advantage, number, ratio_text, summarize

RATIO_HEADER = "ledgerflow vs this (>1 = ledgerflow better)"


# -- tables ------------------------------------------------------------------------------------


def compare_rows(runs: Any) -> list[list[str]]:
    """One row per (metric, system) of a `compare` workload (harness.workloads.WorkloadRuns)."""
    workload = runs.workload
    reference = runs.ledgerflow()
    rows: list[list[str]] = []
    for metric in workload.metrics:
        base = None
        if reference is not None and reference.results:
            base = summarize(reference.values(metric)).median
        for system_runs in runs.systems:
            system = system_runs.system
            label = system.label + ("" if system.matched else " [default setting]")
            metric_text = f"{metric.label} ({metric.direction})"
            if not system_runs.results:
                reason = system_runs.skipped or "; ".join(system_runs.errors[:1]) or "no result"
                rows.append([label, metric_text, "failed", "", "", reason[:160]])
                continue
            summary = summarize(system_runs.values(metric))
            if system_runs is reference:
                ratio = "(reference)"
            elif base is None:
                ratio = "n/a (ledgerflow failed)"
            else:
                ratio = ratio_text(advantage(base, summary.median, metric.higher_is_better))
            note = f" ({len(system_runs.errors)} failed)" if system_runs.errors else ""
            rows.append(
                [
                    label,
                    metric_text,
                    number(summary.median) + note,
                    number(summary.min),
                    number(summary.max),
                    ratio,
                ]
            )
    return rows


COMPARE_HEADERS = ["system", "metric", "median", "min", "max", RATIO_HEADER]
LEDGER_HEADERS = [
    "measure",
    "median",
    "min",
    "max",
    "anchor (same process)",
    "anchor median",
    "ledgerflow vs anchor (>1 = better)",
]


def ledger_table(rows: Sequence[dict[str, Any]]) -> list[list[str]]:
    table = []
    for row in rows:
        summary, anchor = row["summary"], row["anchor_summary"]
        higher = row["unit"].startswith("/")
        ratio = ""
        if anchor is not None:
            ratio = ratio_text(advantage(summary.median, anchor.median, higher))
        table.append(
            [
                row["measure"],
                number(summary.median),
                number(summary.min),
                number(summary.max),
                row["anchor"],
                number(anchor.median) if anchor is not None else "",
                ratio,
            ]
        )
    return table


def console_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [
        max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=False)
    ]
    lines = []
    for index, row in enumerate([list(headers), *rows]):
        cells = [
            str(cell).ljust(width) if position < 2 else str(cell).rjust(width)
            for position, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
        if index == 0:
            lines.append("  ".join("-" * width for width in widths))
    return "\n".join(lines)


def markdown_table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], left: int = 2, align: str = ""
) -> str:
    """A Markdown table: `align` gives l/r per column, else the first `left` columns are
    left-aligned and the others right-aligned."""
    align = align or "l" * left + "r" * (len(headers) - left)

    def cell(value: str) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in headers) + " |"]
    lines.append(
        "|" + "|".join(" :--- " if align[i] == "l" else " ---: " for i in range(len(headers))) + "|"
    )
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# -- chart -------------------------------------------------------------------------------------


def chart_points(
    all_runs: Sequence[Any], ledger: Sequence[dict[str, Any]] = ()
) -> list[dict[str, Any]]:
    """(label, ratio, matched) for every charted metric against every anchor that produced one."""
    points: list[dict[str, Any]] = []
    for runs in all_runs:
        workload = runs.workload
        reference = runs.ledgerflow()
        if workload.kind != "compare" or reference is None or not reference.results:
            continue
        for metric in workload.metrics:
            if not metric.chart:
                continue
            base = summarize(reference.values(metric)).median
            for system_runs in runs.systems:
                if system_runs is reference or not system_runs.results:
                    continue
                if system_runs.system.floor:  # a limit, not a peer: tables only
                    continue
                other = summarize(system_runs.values(metric)).median
                ratio = advantage(base, other, metric.higher_is_better)
                if ratio is None:
                    continue
                points.append(
                    {
                        "label": f"{workload.tag}: {metric.label} vs {system_runs.system.label}",
                        "ratio": ratio,
                        "kind": "matched" if system_runs.system.matched else "default",
                    }
                )
    for row in ledger:
        if row["anchor_summary"] is None:
            continue
        ratio = advantage(
            row["summary"].median, row["anchor_summary"].median, row["unit"].startswith("/")
        )
        if ratio is not None:
            points.append(
                {
                    "label": f"7. {row['measure']} vs its floor",
                    "ratio": ratio,
                    "kind": "floor",
                }
            )
    return points


CHART_COLORS = {
    "better": ("#2e7d32", "ledgerflow better (matched settings)"),
    "worse": ("#c62828", "anchor better (matched settings)"),
    "default": ("#9e9e9e", "vs an anchor at its own default setting"),
    "floor": ("#1565c0", "7. ledger vs a floor (bare SQLite / SHA-256 doing less work)"),
}


def point_color(point: dict[str, Any]) -> str:
    kind = point.get("kind", "matched")
    if kind == "matched":
        kind = "better" if point["ratio"] >= 1 else "worse"
    return CHART_COLORS[kind][0]


def plot(points: Sequence[dict[str, Any]], path: str | Path, title: str = "") -> None:
    """Horizontal bars of ledgerflow's advantage (log scale, 1 = parity). Needs matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    ordered = list(points)[::-1]
    ratios = [point["ratio"] for point in ordered]
    figure, axes = plt.subplots(figsize=(13, 0.3 * len(ordered) + 2.2))
    axes.barh(range(len(ordered)), ratios, color=[point_color(p) for p in ordered])
    axes.set_xscale("log")
    axes.set_xlim(min([*ratios, 0.5]) / 1.6, max([*ratios, 2.0]) * 4)
    axes.axvline(1.0, color="black", linewidth=1)
    axes.set_yticks(range(len(ordered)))
    axes.set_yticklabels([point["label"] for point in ordered], fontsize=7.5)
    for y, ratio in enumerate(ratios):
        axes.text(ratio, y, f" {ratio:.2f}x", va="center", fontsize=7)
    axes.set_xlabel("ledgerflow's advantage, from medians (log scale): > 1 = ledgerflow better")
    kinds = {point.get("kind", "matched") for point in points}
    shown = [
        key
        for key in CHART_COLORS
        if key in kinds or (key in ("better", "worse") and "matched" in kinds)
    ]
    axes.legend(
        handles=[Patch(color=CHART_COLORS[key][0], label=CHART_COLORS[key][1]) for key in shown],
        loc="lower right",
        fontsize=7.5,
    )
    axes.set_title(title or "ledgerflow vs anchors", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(figure)


# -- RESULTS.md --------------------------------------------------------------------------------


def settings_text(settings: dict[str, str] | None) -> str:
    if not settings:
        return ""
    return "; ".join(f"{key}: {value}" for key, value in settings.items())


def results_markdown(
    meta: dict[str, Any], all_runs: Sequence[Any], ledger: Sequence[dict[str, Any]]
) -> str:
    out: list[str] = []
    add = out.append
    add("# ledgerflow comparative benchmark\n")
    add(
        f"Generated by `{meta['command']}` on {meta['date']} "
        f"({meta['mode']}; {meta['repeat']} repetitions per system; harness wall time "
        f"{meta['wall_seconds']:.0f} s). Regenerate with the same command; do not edit by hand.\n"
    )
    add(
        "**How to read the ratios**: every ratio is ledgerflow's advantage over that system, "
        "**> 1 = ledgerflow better, < 1 = the anchor is better**, whatever the metric's "
        "direction (throughput: ledgerflow / anchor; time, latency, memory: anchor / "
        "ledgerflow), computed from the medians. Each metric also says whether higher or lower "
        "is better. Rows marked *[default setting]* are an anchor at its out-of-the-box "
        "durability, which differs from ledgerflow's; compare against the matched rows.\n"
    )
    add("## Machine\n")
    machine = meta["machine"]
    for key in ("cpu", "cores", "ram", "os", "python", "sqlite"):
        add(f"- {key}: {machine.get(key, 'unknown')}")
    add("")
    add("## Versions measured\n")
    add(
        f"- ledgerflow (harness interpreter `{meta['ledgerflow_python']}`): "
        + ", ".join(f"{name} {version}" for name, version in meta["ledgerflow_versions"].items())
    )
    for name, info in meta["anchors"].items():
        if info["error"]:
            add(f"- {name}: **not available** — {info['error']}")
        else:
            add(f"- {name} (`benchmarks/.venvs/{name}`): pinned {', '.join(info['pins'])}")
    add("\nFull `pip freeze` of every anchor virtualenv is at the end of this file.\n")
    add("## Method\n")
    add(
        "- Every system runs in its own process and virtualenv (the harness imports none of "
        "them); one repetition = one fresh process; systems alternate run by run "
        "(A B C A B C ...). Timings exclude interpreter start, imports and database setup, and "
        "follow the same untimed warm-up in every system (one run; workload 1: one batch of "
        "200; workload 2: none, one run per process; workload 6: 20 calls).\n"
        "- Same work everywhere: same program shape, no-op tool bodies, same number of runs and "
        "the same concurrency driver (`benchmarks/anchors/bench_common.py`), same durability "
        "where the system allows it.\n"
        "- median / min / max are over repetitions."
    )
    add("")
    add("## Durability settings (as observed by each runner)\n")
    grouped: dict[tuple[str, str], list[str]] = {}
    for runs in all_runs:
        for system_runs in runs.systems:
            text = settings_text(system_runs.first("settings"))
            if text and runs.workload.kind == "compare":
                key = (system_runs.system.label, text)
                grouped.setdefault(key, []).append(runs.workload.number)
    if grouped:
        rows = [[label, ", ".join(numbers), text] for (label, text), numbers in grouped.items()]
        add(markdown_table(["system", "workloads", "setting"], rows, left=3))
    add(
        "\nWorkloads 1 and 2 are in memory for both kernels (no durability). Workload 7: "
        "ledger_bench.py measures FULL and NORMAL itself (WAL mode).\n"
    )
    add("## Results\n")
    for runs in all_runs:
        workload = runs.workload
        add(f"### {workload.number}. {workload.title}\n")
        add(workload.description + "\n")
        if workload.kind == "ledger":
            if ledger:
                add(markdown_table(LEDGER_HEADERS, ledger_table(ledger), align="lrrrlrr"))
            else:
                errors = "; ".join(runs.systems[0].errors[:2]) if runs.systems else ""
                add(f"No result: {errors or 'not run'}")
        else:
            add(markdown_table(COMPARE_HEADERS, compare_rows(runs)))
        bullets = list(workload.notes)
        for system_runs in runs.systems:
            label = system_runs.system.label
            batches = [
                r["mean_envelopes_per_commit"]
                for r in system_runs.results
                if "mean_envelopes_per_commit" in r
            ]
            if batches:
                bullets.append(
                    f"{label}: {summarize(batches).median:.1f} envelopes per ledger commit "
                    "(median; concurrent appends share one commit: group commit)"
                )
            for key in ("bug", "workaround"):
                value = system_runs.first(key)
                if value:
                    bullets.append(f"**{label} {key}**: {value}")
            if system_runs.errors:
                count = len(system_runs.errors)
                bullets.append(
                    f"**{label}: {count} repetition(s) failed**: {system_runs.errors[0][:400]}"
                )
            if system_runs.skipped:
                bullets.append(f"**{label} not run**: {system_runs.skipped}")
        if bullets:
            add("")
            out.extend(f"- {bullet}" for bullet in bullets)
        add("")
    if meta.get("chart"):
        add(f"## Chart\n\n{meta['chart']}\n")
    if meta.get("notes"):
        add("## Notes\n")
        for note in meta["notes"]:
            add(f"- {note}")
        add("")
    add("## Anchor environments (pip freeze)\n")
    for name, info in meta["anchors"].items():
        add(
            f"<details><summary>{name}</summary>\n\n```\n"
            + "\n".join(info["freeze"])
            + "\n```\n\n</details>\n"
        )
    return "\n".join(out).rstrip() + "\n"


def main() -> None:
    if len(sys.argv) != 3 or sys.argv[1] != "--chart":
        raise SystemExit("usage: report.py --chart OUT.png < points.json")
    data = json.load(sys.stdin)
    plot(data["points"], sys.argv[2], data.get("title", ""))


if __name__ == "__main__":
    main()
