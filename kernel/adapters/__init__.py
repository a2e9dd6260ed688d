"""Built-in LLM adapters. `MockLLMAdapter` needs nothing; others import their SDK lazily."""

from kernel.adapters.mock import MockLLMAdapter

__all__ = ["MockLLMAdapter"]
