"""A deterministic LLM for tests and offline runs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from kernel.llm import LLMResult
from kernel.trace import Usage

DEFAULT_KEY = "__default__"


def count_tokens(text: str) -> int:
    """A deterministic stand-in for a tokenizer: whitespace-separated words."""
    return len(text.split())


class MockLLMAdapter:
    """Replies without a model.

    - `MockLLMAdapter("yes")`: always "yes".
    - `MockLLMAdapter(["SAFE", "yes"])`: replies in call order (an error once they run out).
    - `MockLLMAdapter({"Classify": "SAFE", "__default__": "ok"})`: the first key found in the
      prompt text picks the reply; `__default__` otherwise (an error if there is none).

    Usage is counted in words so budget tests are deterministic. `calls` records every call's
    messages and options for assertions.
    """

    def __init__(self, replies: str | Sequence[str] | Mapping[str, str]) -> None:
        self._replies = replies
        self._next = 0
        self.calls: list[dict[str, Any]] = []

    @property
    def prompts(self) -> list[str]:
        """The text of every message sent, call by call."""
        return ["\n".join(str(m.get("content", "")) for m in c["messages"]) for c in self.calls]

    async def complete(self, messages: list[dict[str, Any]], **options: Any) -> LLMResult:
        self.calls.append({"messages": messages, "options": options})
        text = self._pick("\n".join(str(m.get("content", "")) for m in messages))
        prompt_tokens = sum(count_tokens(str(m.get("content", ""))) for m in messages)
        completion_tokens = count_tokens(text)
        usage = Usage(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
        )
        return LLMResult(text=text, usage=usage, model="mock")

    def _pick(self, prompt: str) -> str:
        replies = self._replies
        if isinstance(replies, str):
            return replies
        if isinstance(replies, Mapping):
            for key, reply in replies.items():
                if key != DEFAULT_KEY and key in prompt:
                    return reply
            if DEFAULT_KEY in replies:
                return replies[DEFAULT_KEY]
            raise LookupError(f"MockLLMAdapter: no reply matches the prompt and no {DEFAULT_KEY!r}")
        if self._next >= len(replies):
            raise LookupError(f"MockLLMAdapter: all {len(replies)} scripted replies were used")
        reply = replies[self._next]
        self._next += 1
        return reply
