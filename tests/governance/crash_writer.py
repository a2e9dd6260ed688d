"""Crash-test writer (run by test_crash_safety.py, not collected by pytest).

    python crash_writer.py <ledger path> <signer key text> <origin> <tasks>

Opens the ledger (group commit, synchronous=FULL, a checkpoint every 50 envelopes) and runs
`tasks` concurrent appenders forever. After each append is acknowledged it prints
`<seq> <entry_hash>` and flushes, so every line the parent reads is a promise of durability.
"""

from __future__ import annotations

import asyncio
import sys

from governance.checkpoint import Signer
from governance.ledger import Ledger


async def main(path: str, signer_text: str, origin: str, tasks: int) -> None:
    signer = Signer.from_text(signer_text)
    ledger = await Ledger.open_at(
        path, signer=signer, origin=origin, checkpoint_every=50, synchronous="FULL"
    )

    async def appender(task: int) -> None:
        number = 0
        while True:
            envelope = await ledger.append(
                f"run-{task}",
                "step",
                step_id=f"s{number}",
                status="SUCCESS",
                payload={"task": task, "n": number, "cost": 0.125},
            )
            # One write per line: a line the parent reads whole was acknowledged whole.
            sys.stdout.write(f"{envelope.seq} {envelope.entry_hash}\n")
            sys.stdout.flush()
            number += 1

    await asyncio.gather(*(appender(task) for task in range(tasks)))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])))
