"""Built-in LLM adapters. `MockLLMAdapter` needs nothing; others import their SDK lazily.

`LiteLLMAdapter` (and its `LLMProviderError`) load on first access, so importing this package
never imports litellm.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kernel.adapters.mock import MockLLMAdapter

if TYPE_CHECKING:
    from kernel.adapters.litellm import LiteLLMAdapter, LLMProviderError

__all__ = ["LLMProviderError", "LiteLLMAdapter", "MockLLMAdapter"]

_LAZY = {"LiteLLMAdapter": "kernel.adapters.litellm", "LLMProviderError": "kernel.adapters.litellm"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
