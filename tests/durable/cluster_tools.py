"""Tools of the gateway instances the multi-instance tests start (`--tools
tests.durable.cluster_tools:TOOLS`): each execution appends `trace step instance` to the file
named by LEDGERFLOW_TEST_EFFECTS (one write, fsynced), then returns who ran it, so the tests can
tell which instance executed a step and which execution the ledger kept."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from kernel import PENDING
from kernel.tools import ToolContext

WORK_SECONDS = 0.25  # long enough to be caught mid-step by a kill


def _effect(ctx: ToolContext) -> dict[str, Any]:
    instance = os.environ["LEDGERFLOW_TEST_INSTANCE"]
    line = f"{ctx.trace_id} {ctx.step_id} {instance}\n".encode()
    fd = os.open(os.environ["LEDGERFLOW_TEST_EFFECTS"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)
    return {"by": instance}


def prepare(ctx: ToolContext) -> dict[str, Any]:
    return _effect(ctx)


def gate(ctx: ToolContext) -> str:
    _effect(ctx)
    return PENDING  # waits for the approval webhook


async def work(ctx: ToolContext) -> dict[str, Any]:
    done = _effect(ctx)
    await asyncio.sleep(WORK_SECONDS)
    return done


def finish(ctx: ToolContext) -> dict[str, Any]:
    return _effect(ctx)


async def hang(ctx: ToolContext) -> dict[str, Any]:
    done = _effect(ctx)
    await asyncio.sleep(600)  # until cancelled
    return done


TOOLS = {"prepare": prepare, "gate": gate, "work": work, "finish": finish, "hang": hang}

# prepare -> gate (suspends on the instance that started the run) -> work -> finish
PROGRAM: dict[str, Any] = {
    "name": "cluster",
    "steps": [
        {"id": "prepare", "type": "tool", "tool": "prepare"},
        {"id": "gate", "type": "tool", "tool": "gate"},
        {"id": "work", "type": "tool", "tool": "work"},
        {"id": "finish", "type": "tool", "tool": "finish"},
    ],
}

# A run that keeps its instance busy until it is cancelled.
HANGING: dict[str, Any] = {
    "name": "hanging",
    "steps": [
        {"id": "prepare", "type": "tool", "tool": "prepare"},
        {"id": "hang", "type": "tool", "tool": "hang"},
        {"id": "finish", "type": "tool", "tool": "finish"},
    ],
}
