"""The LLM port: any object with `async complete(messages, **options)` is an adapter."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from kernel.trace import Usage


@dataclass(frozen=True, slots=True)
class LLMResult:
    """A completion with its accounting. Adapters may also return a plain `str`."""

    text: str
    usage: Usage | None = None
    cost_usd: float | None = None
    model: str | None = None


@runtime_checkable
class LLMAdapter(Protocol):
    async def complete(self, messages: list[dict[str, Any]], **options: Any) -> str | LLMResult: ...


def as_result(reply: Any) -> LLMResult:
    """Normalise what an adapter returned; anything but str/LLMResult is a clear error."""
    if isinstance(reply, LLMResult):
        return reply
    if isinstance(reply, str):
        return LLMResult(text=reply)
    raise TypeError(f"LLM adapter returned {type(reply).__name__}; expected str or LLMResult")
