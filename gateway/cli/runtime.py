"""What runs the steps of a command's programs: the `--tools` and `--llm-mock` options (defined
here once, for every command that runs steps) and the tools and model of a settings file."""

from __future__ import annotations

import argparse
import contextlib
import sys

from gateway.cli.errors import UsageError
from gateway.cli.inputs import load_tool_specs
from gateway.settings import Settings
from gateway.tools.loading import Tool, ToolLoadingError, load_spec
from kernel import LLMAdapter, Program, StepType
from kernel.adapters import MockLLMAdapter


def add_runtime_options(parser: argparse.ArgumentParser, *, llm: bool = True) -> None:
    parser.add_argument(
        "--tools",
        metavar="MODULE:ATTR",
        action="append",
        help="tools the programs may call: a dict (name -> callable) or one callable, imported "
        "from MODULE (the working directory is searched first); repeatable",
    )
    if llm:
        parser.add_argument(
            "--llm-mock",
            metavar="REPLY",
            action="append",
            dest="llm_mock",
            help="answer llm steps with REPLY without calling a model; repeat for replies in "
            "call order (a single reply answers every call)",
        )


class Runtime:
    """The tools and the LLM the command line gave, and hints at the flag a program lacks."""

    def __init__(self, args: argparse.Namespace, *, quiet_imports: bool = False) -> None:
        if quiet_imports:  # serving on stdio: a tool module printing at import
            with contextlib.redirect_stdout(sys.stderr):
                self.tools: dict[str, Tool] = load_tool_specs(args.tools) or {}
        else:
            self.tools = load_tool_specs(args.tools) or {}
        replies: list[str] | None = getattr(args, "llm_mock", None)
        self.llm: LLMAdapter | None = mock_llm(replies) if replies else None

    def hints(self, program: Program) -> list[str]:
        steps = list(program.all_steps())
        hints = []
        missing = sorted({s.tool for s in steps if s.tool is not None and s.tool not in self.tools})
        if missing:
            hints.append(f"register {', '.join(missing)} with --tools MODULE:ATTR")
        if self.llm is None and any(s.type is StepType.LLM for s in steps):
            hints.append("answer llm steps with --llm-mock REPLY")
        return hints


def mock_llm(replies: list[str]) -> MockLLMAdapter:
    return MockLLMAdapter(replies[0] if len(replies) == 1 else replies)


def settings_tools(settings: Settings) -> dict[str, Tool]:
    """`[tools] name = "module:attr"`: each spec must name exactly one callable."""
    tools: dict[str, Tool] = {}
    for name, spec in settings.tools.items():
        try:
            loaded = load_spec(spec)
        except ToolLoadingError as exc:
            raise UsageError(f"[tools] {name}: {exc}") from None
        if len(loaded) != 1:
            raise UsageError(f"[tools] {name}: '{spec}' names {len(loaded)} tools, not one")
        tools[name] = next(iter(loaded.values()))
    return tools


def settings_llm(settings: Settings) -> LLMAdapter | None:
    model, replies = settings.llm.model, settings.llm.mock_replies
    if model is None:
        return None
    if model != "mock":
        try:
            from kernel.adapters import LiteLLMAdapter

            return LiteLLMAdapter(model)
        except ImportError as exc:
            raise UsageError(f"llm.model '{model}': {exc}") from None
    if not replies:
        raise UsageError("llm.model = 'mock' needs llm.mock_replies")
    return mock_llm(replies)
