"""Planner: intent -> validated Program, with the model's mistakes sent back for a retry."""

from __future__ import annotations

import json
from typing import Any

import pytest

from kernel import ExecutionVM, LedgerflowError, Program, TraceStatus
from kernel.adapters import MockLLMAdapter
from kernel.planner import SYSTEM_PROMPT, Planner, PlannerError, check_reply

TOOLS = ["fetch_rss", "summarize", "classify"]
INTENT = "Fetch latest AI news, summarize, classify by topic"

NEWS: dict[str, Any] = {
    "name": "ai_news",
    "steps": [
        {"id": "fetch", "type": "tool", "tool": "fetch_rss", "args": {"user": "$user_id"}},
        {
            "id": "digest",
            "type": "tool",
            "tool": "summarize",
            "args": {"items": "$fetch.output"},
            "output_key": "summary",
        },
        {"id": "topic", "type": "tool", "tool": "classify", "args": {"text": "$summary"}},
        {
            "id": "is_tech",
            "type": "condition",
            "condition": "$topic.output == 'tech'",
            "then": "done",
            "otherwise": "done",
        },
        {"id": "done", "type": "tool", "tool": "summarize", "args": {"items": ["$topic"]}},
    ],
}


def reply(program: dict[str, Any]) -> str:
    return json.dumps(program)


def with_step(step: dict[str, Any]) -> dict[str, Any]:
    return {**NEWS, "steps": [step, *NEWS["steps"][1:]]}


async def generate(llm: MockLLMAdapter, **kwargs: Any) -> Program:
    planner = Planner(llm, max_retries=kwargs.pop("max_retries", 2))
    return await planner.generate(INTENT, TOOLS, kwargs.pop("context_keys", ["user_id"]), **kwargs)


async def test_valid_first_reply_costs_exactly_one_call() -> None:
    llm = MockLLMAdapter([reply(NEWS)])
    program = await generate(llm)
    assert program.hash == Program.from_dict(NEWS).hash
    assert len(llm.calls) == 1
    assert llm.calls[0]["options"] == {"temperature": 0.0}


async def test_prompt_teaches_the_dsl_and_lists_tools_and_context_keys() -> None:
    llm = MockLLMAdapter([reply(NEWS)])
    await generate(llm)
    system, user = llm.calls[0]["messages"]
    assert system["role"] == "system" and user["role"] == "user"
    for term in ("tool", "llm", "condition", "parallel", "then", "otherwise", "$step_id.output"):
        assert term in system["content"]
    assert INTENT in user["content"]
    assert "Allowed tools: fetch_rss, summarize, classify" in user["content"]
    assert "Context keys: user_id" in user["content"]


def test_the_prompt_example_is_a_valid_program() -> None:
    example = SYSTEM_PROMPT[SYSTEM_PROMPT.index("{", SYSTEM_PROMPT.index("Example")) :]
    tools = ["get_order", "issue_refund", "notify_staff"]
    program, problems = check_reply(example, tools, ["order_id"])
    assert problems == [] and program is not None


async def test_unlisted_tool_is_rejected_and_the_retry_sees_the_problem() -> None:
    bad = with_step({"id": "fetch", "type": "tool", "tool": "scrape_web"})
    llm = MockLLMAdapter([reply(bad), reply(NEWS)])
    program = await generate(llm)
    assert program.hash == Program.from_dict(NEWS).hash
    assert len(llm.calls) == 2
    second = llm.prompts[1]
    assert "tool 'scrape_web' is not registered" in second
    assert reply(bad) in second  # the rejected reply is shown back to the model
    assert llm.calls[1]["messages"][-2]["role"] == "assistant"


async def test_fenced_json_is_accepted() -> None:
    text = f"Here is the program:\n```json\n{json.dumps(NEWS, indent=2)}\n```\nEnjoy."
    program = await generate(MockLLMAdapter([text]))
    assert program.name == "ai_news"


async def test_unknown_context_key_is_rejected() -> None:
    bad = with_step(
        {"id": "fetch", "type": "tool", "tool": "fetch_rss", "args": {"to": "$user_email"}}
    )
    with pytest.raises(PlannerError) as info:
        await generate(MockLLMAdapter([reply(bad)]), max_retries=0)
    [problems] = info.value.attempts
    assert problems == [
        "step 'fetch': '$user_email' reads unknown context key 'user_email' "
        "(available context keys: user_id)"
    ]


async def test_references_to_steps_and_output_keys_are_not_context_keys() -> None:
    program = await generate(MockLLMAdapter([reply(NEWS)]), context_keys=["user_id"])
    assert {ref.name for node in program.compiled.steps.values() for ref in node.references} == {
        "user_id",
        "fetch",
        "summary",
        "topic",
    }


async def test_llm_steps_are_rejected_unless_allowed() -> None:
    llm_step = {"id": "fetch", "type": "llm", "prompt": "News for $user_id"}
    program = with_step(llm_step)
    assert (await generate(MockLLMAdapter([reply(program)]))).compiled.steps["fetch"]
    llm = MockLLMAdapter([reply(program)])
    with pytest.raises(PlannerError, match="llm steps are not allowed"):
        await generate(llm, max_retries=0, allow_llm_steps=False)
    assert "llm steps: not allowed" in llm.prompts[0]


async def test_planner_error_lists_every_attempts_problems() -> None:
    unknown_field = with_step({"id": "fetch", "type": "tool", "tool": "fetch_rss", "retry": 3})
    unknown_tool = with_step({"id": "fetch", "type": "tool", "tool": "scrape_web"})
    llm = MockLLMAdapter(
        ["Sure! I will fetch the news.", reply(unknown_field), reply(unknown_tool)]
    )
    with pytest.raises(PlannerError) as info:
        await generate(llm)
    error = info.value
    assert isinstance(error, LedgerflowError)
    assert len(llm.calls) == 3 == len(error.attempts)
    assert "not a JSON object" in error.attempts[0][0]
    assert "unknown field 'retry'" in error.attempts[1][0]
    assert "tool 'scrape_web' is not registered" in error.attempts[2][0]
    message = str(error)
    assert message.startswith("no valid program after 3 attempt(s)")
    for i, problems in enumerate(error.attempts, start=1):
        assert f"attempt {i}: {'; '.join(problems)}" in message
    assert "unknown field 'retry'" in llm.prompts[2]  # each retry sees the latest problems


async def test_temperature_is_passed_and_max_retries_is_checked() -> None:
    llm = MockLLMAdapter([reply(NEWS)])
    await Planner(llm, temperature=0.3).generate(INTENT, TOOLS, ["user_id"])
    assert llm.calls[0]["options"] == {"temperature": 0.3}
    with pytest.raises(ValueError, match="max_retries"):
        Planner(llm, max_retries=-1)


async def test_a_program_that_shadows_a_context_key_is_rejected() -> None:
    shadow = {"name": "p", "steps": [{"id": "user_id", "type": "tool", "tool": "fetch_rss"}]}
    with pytest.raises(PlannerError, match="context key 'user_id' is also a step id"):
        await generate(MockLLMAdapter([reply(shadow)]), max_retries=0)


async def test_the_generated_program_runs_on_the_vm() -> None:
    program = await generate(MockLLMAdapter([reply(NEWS)]))
    tools = {
        "fetch_rss": lambda user: [f"news for {user}"],
        "summarize": lambda items: " / ".join(map(str, items)),
        "classify": lambda text: "tech",
    }
    trace = await ExecutionVM(tools=tools).run(program, context={"user_id": "u1"})
    assert trace.status is TraceStatus.SUCCESS
    assert [r.step_id for r in trace.steps] == ["fetch", "digest", "topic", "is_tech", "done"]
    assert trace.steps[-1].output == "tech"
