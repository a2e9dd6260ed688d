"""LiteLLMAdapter against litellm's own mock (`mock_response=`): no network, no API key."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest

from kernel import StepStatus, TraceStatus, VMError
from kernel.adapters import LiteLLMAdapter, LLMProviderError

MESSAGES = [{"role": "user", "content": "Classify: I was charged twice"}]
PRICED = "openai/gpt-4o-mini"  # in litellm's bundled price map
UNPRICED = "openai/ledgerflow-unpriced-test-model"  # a valid route litellm cannot price

LABEL: dict[str, Any] = {
    "id": "label",
    "type": "llm",
    "prompt": "Classify: $text",
    "allowed_outputs": ["BILLING", "OTHER"],
}
CLASSIFY = {"name": "classify", "steps": [LABEL]}


async def test_text_usage_and_model_come_back() -> None:
    result = await LiteLLMAdapter(PRICED, mock_response="BILLING").complete(MESSAGES)
    assert result.text == "BILLING"
    assert result.model == "gpt-4o-mini"
    usage = result.usage
    assert usage is not None
    assert usage.prompt_tokens > 0 and usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


async def test_cost_is_reported_for_a_priced_model() -> None:
    result = await LiteLLMAdapter(PRICED, mock_response="ok").complete(MESSAGES)
    assert isinstance(result.cost_usd, float) and result.cost_usd > 0
    assert result.usage is not None and result.usage.cost_usd == result.cost_usd


async def test_cost_is_none_when_litellm_cannot_price_the_model() -> None:
    result = await LiteLLMAdapter(UNPRICED, mock_response="ok").complete(MESSAGES)
    assert result.text == "ok"
    assert result.cost_usd is None
    assert result.usage is not None and result.usage.cost_usd is None


async def test_defaults_and_options_are_passed_through(monkeypatch: pytest.MonkeyPatch) -> None:
    import litellm

    sent: list[dict[str, Any]] = []
    original = litellm.acompletion

    async def spy(**kwargs: Any) -> Any:
        sent.append(kwargs)
        return await original(**kwargs)

    monkeypatch.setattr(litellm, "acompletion", spy)
    adapter = LiteLLMAdapter(PRICED, mock_response="default", temperature=0.7, max_tokens=5)
    result = await adapter.complete(MESSAGES, temperature=0.0, model="openai/gpt-4o", seed=1)
    assert sent == [
        {
            "model": "openai/gpt-4o",  # a step's model overrides the adapter's
            "messages": MESSAGES,
            "mock_response": "default",
            "temperature": 0.0,  # options override defaults
            "max_tokens": 5,
            "seed": 1,
        }
    ]
    assert result.model == "gpt-4o"
    assert adapter.defaults == {"mock_response": "default", "temperature": 0.7, "max_tokens": 5}


async def test_provider_error_carries_the_provider_message() -> None:
    adapter = LiteLLMAdapter(PRICED, mock_response=Exception("rate limited"))
    with pytest.raises(LLMProviderError, match="rate limited") as info:
        await adapter.complete(MESSAGES)
    assert isinstance(info.value, VMError)
    assert str(info.value).startswith(f"{PRICED}: ")


async def test_provider_error_is_the_step_error_in_a_run(run: Any) -> None:
    adapter = LiteLLMAdapter(PRICED, mock_response=Exception("rate limited"))
    trace = await run(CLASSIFY, context={"text": "charged twice"}, llm=adapter)
    assert trace.status is TraceStatus.FAILED
    record = trace.steps[0]
    assert record.status is StepStatus.FAILED
    assert "rate limited" in (record.error or "") and PRICED in (record.error or "")
    assert "rate limited" in (trace.error or "")


async def test_step_options_reach_litellm_and_usage_reaches_the_trace(run: Any) -> None:
    program = {"name": "classify", "steps": [{**LABEL, "options": {"mock_response": " BILLING\n"}}]}
    adapter = LiteLLMAdapter(PRICED, mock_response="OTHER")
    trace = await run(program, context={"text": "charged twice"}, llm=adapter)
    assert trace.status is TraceStatus.SUCCESS
    assert trace.steps[0].output == "BILLING"
    assert trace.metrics.llm_calls == 1
    assert trace.total_tokens() > 0 and trace.total_cost_usd() > 0


async def test_streaming_is_refused() -> None:
    with pytest.raises(LLMProviderError, match="streaming"):
        await LiteLLMAdapter(PRICED, mock_response="x").complete(MESSAGES, stream=True)


def test_importing_the_kernel_does_not_import_litellm() -> None:
    code = (
        "import sys\n"
        "import kernel, kernel.adapters, kernel.planner\n"
        "from kernel.adapters import MockLLMAdapter\n"
        "assert 'litellm' not in sys.modules, 'litellm imported too early'\n"
        "from kernel.adapters import LLMProviderError\n"
        "assert 'litellm' not in sys.modules, 'the error class needs no litellm'\n"
        "from kernel.adapters import LiteLLMAdapter\n"
        "LiteLLMAdapter('openai/gpt-4o-mini')\n"
        "assert 'litellm' in sys.modules\n"
        "import os\n"
        "assert os.environ['LITELLM_LOCAL_MODEL_COST_MAP'] == 'True'\n"
    )
    # Without the variable: the adapter itself must keep litellm from fetching its price map.
    env = {k: v for k, v in os.environ.items() if k != "LITELLM_LOCAL_MODEL_COST_MAP"}
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
    )
    assert done.returncode == 0, done.stderr


def test_unknown_attribute_of_the_adapters_package_is_an_attribute_error() -> None:
    import kernel.adapters

    with pytest.raises(AttributeError, match="NoSuchAdapter"):
        _ = kernel.adapters.NoSuchAdapter  # type: ignore[attr-defined]
