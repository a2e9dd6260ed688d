"""`$references` in tool args and prompts: typed when whole, rendered when embedded."""

from __future__ import annotations

from typing import Any

from kernel import StepStatus, TraceStatus
from kernel.adapters import MockLLMAdapter
from tests.conftest import tool


def echo(**kwargs: Any) -> Any:
    return kwargs


async def test_whole_reference_keeps_the_values_type(run: Any) -> None:
    program = {
        "name": "p",
        "steps": [tool("e", tool="echo", args={"n": "$n", "items": "$items", "cfg": "$cfg"})],
    }
    trace = await run(program, {"echo": echo}, {"n": 3, "items": [1, 2], "cfg": {"a": True}})
    assert trace.final_output == {"n": 3, "items": [1, 2], "cfg": {"a": True}}


async def test_embedded_reference_is_rendered_dicts_as_json(run: Any) -> None:
    program = {
        "name": "p",
        "steps": [tool("e", tool="echo", args={"text": "order $id costs $$${price} with ${cfg}"})],
    }
    trace = await run(program, {"echo": echo}, {"id": "A-1", "price": 5, "cfg": {"x": 1}})
    assert trace.final_output == {"text": 'order A-1 costs $5 with {"x": 1}'}


async def test_step_output_and_dotted_path_resolve_to_the_value_itself(run: Any) -> None:
    program = {
        "name": "p",
        "steps": [
            tool("first", tool="make"),
            tool(
                "e",
                tool="echo",
                args={
                    "whole": "$first",
                    "same": "$first.output",
                    "deep": "$first.output.items.1.name",
                },
            ),
        ],
    }
    made = {"items": [{"name": "a"}, {"name": "b"}]}
    trace = await run(program, {"make": lambda: made, "echo": echo})
    assert trace.final_output == {"whole": made, "same": made, "deep": "b"}


async def test_nested_args_are_interpolated_recursively(run: Any) -> None:
    program = {
        "name": "p",
        "steps": [tool("e", tool="echo", args={"outer": {"list": ["$a", {"inner": "x-$a"}]}})],
    }
    trace = await run(program, {"echo": echo}, {"a": 7})
    assert trace.final_output == {"outer": {"list": [7, {"inner": "x-7"}]}}


async def test_missing_context_key_is_a_runtime_error_naming_the_key(run: Any) -> None:
    program = {"name": "p", "steps": [tool("e", tool="echo", args={"x": "hello $who"})]}
    trace = await run(program, {"echo": echo})
    assert trace.status is TraceStatus.FAILED
    assert "context key 'who' is missing" in (trace.error or "")


async def test_missing_key_in_a_path_names_the_available_keys(run: Any) -> None:
    program = {"name": "p", "steps": [tool("e", tool="echo", args={"x": "$cfg.nope"})]}
    trace = await run(program, {"echo": echo}, {"cfg": {"a": 1, "b": 2}})
    assert "no key 'nope'" in (trace.error or "")
    assert "keys: a, b" in (trace.error or "")


async def test_missing_value_is_not_retried_nor_skipped(run: Any) -> None:
    calls: list[int] = []
    program = {"name": "p", "steps": [tool("e", tool="echo", args={"x": "$gone"}, on_error="skip")]}
    trace = await run(program, {"echo": lambda **k: calls.append(1)})
    assert trace.status is TraceStatus.FAILED
    assert trace.steps[0].attempts == 0
    assert calls == []


async def test_tool_without_args_receives_the_context_values_it_names(run: Any) -> None:
    def reserve(order_id: str, amount: int) -> str:
        return f"{order_id}:{amount}"

    trace = await run(
        {"name": "p", "steps": [tool("reserve")]},
        {"reserve": reserve},
        {"order_id": "A", "amount": 5, "unrelated": True},
    )
    assert trace.final_output == "A:5"


async def test_tool_args_are_rebuilt_each_call_so_mutation_cannot_leak(run: Any) -> None:
    def mutate(items: list[int]) -> list[int]:
        items.append(99)
        return items

    program = {"name": "p", "steps": [tool("m", tool="mutate", args={"items": [1]})]}
    first = await run(program, {"mutate": mutate})
    second = await run(program, {"mutate": mutate})
    assert first.final_output == second.final_output == [1, 99]


async def test_prompt_and_system_are_interpolated(run: Any) -> None:
    llm = MockLLMAdapter("done")
    program = {
        "name": "p",
        "steps": [
            {
                "id": "ask",
                "type": "llm",
                "system": "You are $role",
                "prompt": "Summarise $doc.title",
            }
        ],
    }
    trace = await run(program, {}, {"role": "an auditor", "doc": {"title": "Q3"}}, llm=llm)
    assert trace.steps[0].status is StepStatus.SUCCESS
    assert llm.calls[0]["messages"] == [
        {"role": "system", "content": "You are an auditor"},
        {"role": "user", "content": "Summarise Q3"},
    ]
