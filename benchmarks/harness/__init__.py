"""The comparative benchmark harness of ledgerflow (driven by benchmarks/run.py).

    envs       the anchors' pinned virtualenvs under benchmarks/.venvs/<name>
    workloads  what is measured, on which systems, with which settings
    stats      medians, percentiles, ratios
    report     console tables, RESULTS.md and the ratio chart

The harness process never imports an anchor: every system runs in a subprocess (its own
virtualenv's interpreter) and answers with JSON.
"""
