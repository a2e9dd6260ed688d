"""Binding tool callables: sync or async, called with keyword arguments."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from kernel.errors import ProgramError
from kernel.tool_args import ArgsCheck

Tool = Callable[..., Any]
ToolT = TypeVar("ToolT", bound=Tool)

_READS_SECRETS = "__ledgerflow_reads_secrets__"
_ACCEPTS = "__ledgerflow_accepts__"
_CHECK_ARGS = "__ledgerflow_check_args__"


def reads_secrets(fn: ToolT) -> ToolT:
    """Declare that a tool may receive secret values: the VM resolves `vault://secret/...` refs
    in its arguments. Every other tool receives the refs themselves."""
    setattr(fn, _READS_SECRETS, True)
    return fn


def declare_inputs(fn: ToolT, accepts: frozenset[str], check: ArgsCheck | None = None) -> ToolT:
    """Declare what a tool that takes `**arguments` accepts (a downstream MCP tool's schema):
    the variables a step without `args` passes it, and a check of a step's literal arguments
    (kernel.tool_args) that the validator runs at load time."""
    setattr(fn, _ACCEPTS, accepts)
    if check is not None:
        setattr(fn, _CHECK_ARGS, check)
    return fn


@dataclass(frozen=True, slots=True)
class ToolContext:
    """What a tool may learn about the call it serves (declare a `ctx` parameter to get it).

    `idempotency_key` is `trace_id:step_id:execution`: the same for every retry of one execution
    of the step and after crash recovery re-runs it, different when a loop runs the step again.
    Pass it to an external API (a payment provider) to make the effect exactly-once.
    """

    trace_id: str
    step_id: str
    execution: int
    idempotency_key: str


@dataclass(frozen=True, slots=True)
class BoundTool:
    name: str
    fn: Tool
    is_async: bool
    # Keyword parameters the tool accepts; None when it takes **kwargs (it accepts any).
    accepts: frozenset[str] | None
    reads_secrets: bool = False
    # Named explicitly in the signature: the VM passes them (never through **kwargs).
    wants_ctx: bool = False
    wants_idempotency_key: bool = False
    check_args: ArgsCheck | None = None

    def inject(self, variables: Mapping[str, Any]) -> dict[str, Any]:
        """Arguments for a step without `args`: the variables whose names the tool accepts."""
        if self.accepts is None:
            return {k: v for k, v in variables.items() if not k.startswith("__")}
        return {k: variables[k] for k in self.accepts if k in variables}


def bind_tool(name: str, fn: Tool) -> BoundTool:
    if not callable(fn):
        raise ProgramError(f"tool '{name}' is not callable (got {type(fn).__name__})")
    named: set[str] = set()
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        accepts: frozenset[str] | None = None
    else:
        named = {p.name for p in params if p.kind is not inspect.Parameter.VAR_KEYWORD}
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
            accepts = None
        else:
            kinds = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
            accepts = frozenset(p.name for p in params if p.kind in kinds)
    declared = getattr(fn, _ACCEPTS, None)
    if isinstance(declared, frozenset):
        accepts = declared
    call = getattr(fn, "__call__", None)  # noqa: B004 - async callable objects count as async
    is_async = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(call)
    return BoundTool(
        name,
        fn,
        is_async,
        accepts,
        reads_secrets=bool(getattr(fn, _READS_SECRETS, False)),
        wants_ctx="ctx" in named,
        wants_idempotency_key="idempotency_key" in named,
        check_args=getattr(fn, _CHECK_ARGS, None),
    )


def args_check_of(tool: BoundTool | Tool) -> ArgsCheck | None:
    """The literal-arguments check a tool declared, bound or not."""
    if isinstance(tool, BoundTool):
        return tool.check_args
    check = getattr(tool, _CHECK_ARGS, None)
    return check if callable(check) else None


def bind_tools(tools: Mapping[str, Tool] | None) -> dict[str, BoundTool]:
    return {name: bind_tool(name, fn) for name, fn in (tools or {}).items()}
