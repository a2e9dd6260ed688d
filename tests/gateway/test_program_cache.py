"""The service keeps loaded and governed programs between calls, exactly: a body runs as that
body, a new saved version or a new policy takes effect at once, and a bad body is reported on
every call."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import kernel.program
from gateway.application.principal import Principal
from gateway.application.program_cache import ProgramCache
from gateway.application.service import Denied, Invalid, LedgerflowService
from governance.policy import PolicySnapshot
from kernel import Program, TraceStatus
from tests.gateway.services import open_service

WHO = Principal.local_operator()
TOOLS = {"echo": lambda n: {"n": n, "type": type(n).__name__}}


def echo(n: Any) -> dict[str, Any]:
    return {
        "name": "echo",
        "steps": [{"id": "e", "type": "tool", "tool": "echo", "args": {"n": n}}],
    }


@pytest.fixture
async def service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Any]:
    async with open_service(tmp_path, monkeypatch, TOOLS) as service:
        yield service


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the programs Program.from_dict loads from now on."""
    seen: list[str] = []
    original = kernel.program.Program.from_dict.__func__  # type: ignore[attr-defined]

    def counting(cls: type[Program], data: dict[str, Any]) -> Program:
        seen.append(str(data.get("name")))
        return original(cls, data)  # type: ignore[no-any-return]

    monkeypatch.setattr(kernel.program.Program, "from_dict", classmethod(counting))
    return seen


async def test_the_same_body_is_loaded_once_and_runs_each_time(
    service: LedgerflowService, loads: list[str]
) -> None:
    for _ in range(3):
        trace = await service.run_program(WHO, echo(7))
        assert trace.status is TraceStatus.SUCCESS and trace.final_output == {"n": 7, "type": "int"}
    assert loads == ["echo"]


async def test_bodies_with_one_hash_still_run_as_themselves(service: LedgerflowService) -> None:
    # 1 and 1.0 have one canonical form (one program hash), yet the tool gets what was sent.
    assert Program.from_dict(echo(1)).hash == Program.from_dict(echo(1.0)).hash
    outputs = [(await service.run_program(WHO, echo(n))).final_output for n in (1, 1.0, 1, True)]
    assert [o["type"] for o in outputs] == ["int", "float", "int", "bool"]


async def test_a_bad_body_is_reported_on_every_call(
    service: LedgerflowService, loads: list[str]
) -> None:
    bad = {"name": "bad", "steps": [{"id": "e", "type": "tool", "tool": "echo", "oops": 1}]}
    for _ in range(2):
        with pytest.raises(Invalid, match="unknown field 'oops'"):
            await service.run_program(WHO, bad)
    assert loads == ["bad", "bad"]


async def test_a_new_saved_version_runs_at_once(service: LedgerflowService) -> None:
    await service.save_program(WHO, echo(1), name="job")
    assert (await service.run_program(WHO, "job")).final_output["n"] == 1
    await service.save_program(WHO, echo(2), name="job")
    assert (await service.run_program(WHO, "job")).final_output["n"] == 2


async def test_a_new_policy_governs_the_next_call(service: LedgerflowService) -> None:
    assert (await service.run_program(WHO, echo(1))).status is TraceStatus.SUCCESS
    await service.workspace.ledger.set_policy(PolicySnapshot(name="strict", tools_deny=("echo",)))
    with pytest.raises(Denied, match="tool 'echo', which is not allowed"):
        await service.run_program(WHO, echo(1))
    await service.workspace.ledger.set_policy(PolicySnapshot(name="caps", max_steps=5))
    trace = await service.run_program(WHO, echo(1))
    assert trace.status is TraceStatus.SUCCESS


def test_the_cache_keeps_the_most_recently_used(loads: list[str]) -> None:
    cache = ProgramCache(size=2)

    def load(n: int) -> Program:
        body = echo(n) | {"name": f"p{n}"}
        return cache.inline(body, lambda: Program.from_dict(body))

    for n in (1, 2, 1, 3, 1, 2):  # 3 pushes out 2 (1 was used later), then 2 pushes out 3
        load(n)
    assert loads == ["p1", "p2", "p3", "p2"]
