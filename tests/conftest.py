"""Shared test helpers."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest

from kernel import ExecutionVM, ManualClock, Program, Trace

# The PostgreSQL fixtures (pg_url, pg_role, ledger_db): tests/postgres.py.
pytest_plugins = ["tests.postgres"]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def run(clock: ManualClock) -> Callable[..., Any]:
    """`await run(program_dict, tools={...}, context={...}, **vm_kwargs)` -> Trace."""

    async def _run(
        program: dict[str, Any] | Program,
        tools: dict[str, Callable[..., Any]] | None = None,
        context: dict[str, Any] | None = None,
        **vm_kwargs: Any,
    ) -> Trace:
        prog = program if isinstance(program, Program) else Program.from_dict(program)
        vm = ExecutionVM(tools=tools, clock=vm_kwargs.pop("clock", clock), **vm_kwargs)
        return await vm.run(prog, context=context)

    return _run


def step_ids(trace: Trace) -> list[str]:
    return [record.step_id for record in trace.steps]


def tool(name: str, **fields: Any) -> dict[str, Any]:
    """A tool step whose id is `name` and whose tool is `name` unless given."""
    return {"id": name, "type": "tool", "tool": fields.pop("tool", name), **fields}


# litellm fetches its model price map over the network at import unless told to use the bundled
# copy; tests run offline.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
