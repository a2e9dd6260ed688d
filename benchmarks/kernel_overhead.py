"""Kernel overhead per step, as a ratio to anchors measured in the same run.

    python benchmarks/kernel_overhead.py [--steps N] [--repeat R]

Anchors (same machine, same process):
  bare_loop      a Python loop calling the same no-op tool: the floor of any step runner
  loop_and_hash  the bare loop plus canonical JSON (json.dumps, sorted keys) + SHA-256 of a small
                 record per step: what hashing every step costs at minimum
ledgerflow runs a linear program of N no-op sync tool steps (state hash included) and reports
microseconds per step: `ledgerflow` in steady state (program already hashed and validated, as when
a saved program is run again), `ledgerflow_first_run` including that one-time work; and how the
cost per step changes from N/10 to N steps (1.0 = perfectly linear).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import statistics
import time

from kernel import ExecutionVM, Program


def noop() -> None:
    return None


def bare_loop(n: int) -> float:
    start = time.perf_counter()
    outputs = []
    for _ in range(n):
        outputs.append(noop())
    return time.perf_counter() - start


def loop_and_hash(n: int) -> float:
    start = time.perf_counter()
    digest = b""
    for i in range(n):
        record = {"step_id": f"s{i}", "status": "SUCCESS", "output": noop(), "error": None}
        data = json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        digest = hashlib.sha256(digest + data.encode()).digest()
    return time.perf_counter() - start


def linear(n: int) -> Program:
    steps = [{"id": f"s{i}", "type": "tool", "tool": "noop"} for i in range(n)]
    return Program.from_dict({"name": "linear", "steps": steps})


def ledgerflow_first_run(n: int) -> float:
    """A new program on a new VM: includes hashing and validating the program once."""
    program, vm = linear(n), ExecutionVM(tools={"noop": noop})
    start = time.perf_counter()
    asyncio.run(vm.run(program))
    return time.perf_counter() - start


def ledgerflow(n: int) -> float:
    """Steady state: the program was hashed and validated by an earlier run on this VM."""
    program, vm = linear(n), ExecutionVM(tools={"noop": noop})

    async def twice() -> float:
        await vm.run(program)
        start = time.perf_counter()
        await vm.run(program)
        return time.perf_counter() - start

    return asyncio.run(twice())


def median_us_per_step(fn: object, n: int, repeat: int) -> float:
    times = [fn(n) for _ in range(repeat)]  # type: ignore[operator]
    return statistics.median(times) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    n, repeat = args.steps, args.repeat
    results = {
        name: median_us_per_step(fn, n, repeat)
        for name, fn in (
            ("bare_loop", bare_loop),
            ("loop_and_hash", loop_and_hash),
            ("ledgerflow_first_run", ledgerflow_first_run),
            ("ledgerflow", ledgerflow),
        )
    }
    small = median_us_per_step(ledgerflow, max(n // 10, 1), repeat)
    print(f"{'system':<22}{'us/step':>10}{'ledgerflow ratio':>20}")
    for name, us in results.items():
        print(f"{name:<22}{us:>10.2f}{results['ledgerflow'] / us:>20.2f}")
    print(
        f"growth: {n // 10} steps {small:.2f} us/step -> {n} steps "
        f"{results['ledgerflow']:.2f} us/step (ratio {results['ledgerflow'] / small:.2f})"
    )


if __name__ == "__main__":
    main()
