"""An adapter for every provider litellm supports (the `llm` extra: `ledgerflow[llm]`).

litellm is imported when an adapter is created, never when this module is, so the kernel stays
importable (and fast to import) without it.
"""

from __future__ import annotations

import math
import os
from typing import Any

from kernel.errors import VMError
from kernel.llm import LLMResult
from kernel.trace import Usage


class LLMProviderError(VMError):
    """A completion failed at the provider (or in litellm); the message is the provider's."""


def _import_litellm() -> Any:
    # Importing litellm otherwise downloads its model price map over the network, which hangs or
    # fails offline; this makes it use the copy bundled with the installed package instead.
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    try:
        import litellm
    except ImportError as exc:
        raise ImportError("LiteLLMAdapter needs litellm: pip install 'ledgerflow[llm]'") from exc
    # On a provider error litellm prints a help banner to stdout, which would corrupt the MCP
    # stdio protocol and `--json` output.
    litellm.suppress_debug_info = True
    return litellm


class LiteLLMAdapter:
    """`LiteLLMAdapter("openai/gpt-4o-mini", temperature=0)`: calls `litellm.acompletion`.

    `defaults` are sent with every call; a step's options (`model`, `temperature`, `options`)
    override them, and a `model` option overrides the adapter's model. Replies carry token usage
    and, when litellm can price the model, the cost in USD. Any failure of the call is raised as
    `LLMProviderError("<model>: <provider message>")`, so the step's error shows the cause.
    """

    def __init__(self, model: str, **defaults: Any) -> None:
        self.model = model
        self.defaults = defaults
        # Imported here so a missing extra is reported when the adapter is built, not mid-run.
        self._litellm = _import_litellm()

    async def complete(self, messages: list[dict[str, Any]], **options: Any) -> LLMResult:
        request = {**self.defaults, **options}
        model = str(request.pop("model", self.model))
        if request.get("stream"):
            raise LLMProviderError(f"{model}: streaming is not supported; the VM needs the reply")
        try:
            response = await self._litellm.acompletion(model=model, messages=messages, **request)
        except Exception as exc:
            raise LLMProviderError(f"{model}: {str(exc) or type(exc).__name__}") from exc
        cost = _cost(self._litellm, response)
        return LLMResult(
            text=_text(model, response),
            usage=_usage(response, cost),
            cost_usd=cost,
            model=getattr(response, "model", None) or model,
        )


def _text(model: str, response: Any) -> str:
    try:
        content = response.choices[0].message.content
    except (AttributeError, IndexError, TypeError) as exc:
        raise LLMProviderError(f"{model}: the response holds no message ({exc})") from exc
    return "" if content is None else str(content)  # None: the model replied with tool calls


def _usage(response: Any, cost: float | None) -> Usage | None:
    usage = getattr(response, "usage", None)
    if usage is None:
        return None
    prompt = int(getattr(usage, "prompt_tokens", 0) or 0)
    completion = int(getattr(usage, "completion_tokens", 0) or 0)
    total = int(getattr(usage, "total_tokens", 0) or 0) or prompt + completion
    return Usage(
        prompt_tokens=prompt, completion_tokens=completion, total_tokens=total, cost_usd=cost
    )


def _cost(litellm: Any, response: Any) -> float | None:
    """The call's price in USD, or None when litellm cannot price the model."""
    try:
        cost = float(litellm.completion_cost(completion_response=response))
    except Exception:  # e.g. litellm.NotFoundError / ModelNotMappedError for unpriced models
        return None
    return cost if math.isfinite(cost) else None
