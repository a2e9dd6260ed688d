"""Loading tools named on the command line as `module:attribute`.

The attribute is either a mapping of tool names to callables or a single callable, registered
under its `__name__`. Every problem is a ToolLoadingError with a one-line message fit for stderr.
"""

from __future__ import annotations

import difflib
import importlib
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from types import ModuleType
from typing import Any

from kernel import LedgerflowError

Tool = Callable[..., Any]


class ToolLoadingError(LedgerflowError, ValueError):
    """A `--tools` spec that cannot be turned into tools."""


def load_tools(specs: Iterable[str]) -> dict[str, Tool]:
    """Merge the tools of every spec; the same name from two specs must be the same callable."""
    ensure_cwd_on_path()
    tools: dict[str, Tool] = {}
    origin: dict[str, str] = {}
    for spec in specs:
        for name, fn in load_spec(spec).items():
            if name in tools and tools[name] is not fn:
                raise ToolLoadingError(
                    f"tool '{name}' is defined by both {origin[name]} and {spec}; keep one of them"
                )
            tools[name], origin[name] = fn, spec
    return tools


def ensure_cwd_on_path() -> None:
    """Let `--tools examples.payments:TOOLS` work from a checkout, as `python -m` would.

    Console scripts do not put the working directory on sys.path, unlike `python -m`.
    """
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)


def load_spec(spec: str) -> dict[str, Tool]:
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise ToolLoadingError(
            f"--tools '{spec}' must be module:attribute (for example examples.payments:TOOLS)"
        )
    if module_name.endswith(".py"):
        dotted = module_name[:-3].replace("/", ".").replace("\\", ".")
        raise ToolLoadingError(
            f"--tools '{spec}' names a file; name the module instead: {dotted}:{attribute}"
        )
    value = _resolve(_import(module_name), module_name, attribute)
    return _as_tools(value, spec)


def _import(module_name: str) -> ModuleType:
    try:
        return importlib.import_module(module_name)
    except Exception as exc:
        # Tell "the named module does not exist" from "its own code or imports failed".
        missing = exc.name if isinstance(exc, ModuleNotFoundError) else None
        if missing is not None and _is_parent_or_self(missing, module_name):
            raise ToolLoadingError(
                f"cannot import module '{module_name}': no module named '{missing}' "
                f"(looked in the working directory {os.getcwd()} and on PYTHONPATH)"
            ) from None
        raise ToolLoadingError(
            f"importing module '{module_name}' failed: {_one_line(exc)}"
        ) from None


def _is_parent_or_self(missing: str, module_name: str) -> bool:
    return module_name == missing or module_name.startswith(missing + ".")


def _resolve(module: ModuleType, module_name: str, attribute: str) -> Any:
    """`attribute` may be dotted (`registry.TOOLS`)."""
    value: Any = module
    where = f"module '{module_name}'"
    done: list[str] = []
    for part in attribute.split("."):
        if not hasattr(value, part):
            names = [n for n in dir(value) if not n.startswith("_")]
            close = difflib.get_close_matches(part, names, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ToolLoadingError(f"{where} has no attribute '{part}'{hint}")
        value = getattr(value, part)
        done.append(part)
        where = f"'{module_name}:{'.'.join(done)}'"
    return value


def _as_tools(value: Any, spec: str) -> dict[str, Tool]:
    if isinstance(value, Mapping):
        tools: dict[str, Tool] = {}
        for name, fn in value.items():
            if not isinstance(name, str):
                raise ToolLoadingError(f"'{spec}' has a non-string tool name {name!r}")
            if not callable(fn):
                raise ToolLoadingError(
                    f"'{spec}' maps '{name}' to a value of type {type(fn).__name__}, not a callable"
                )
            tools[name] = fn
        return tools
    if callable(value):
        name = getattr(value, "__name__", None)
        if not isinstance(name, str):
            raise ToolLoadingError(
                f"'{spec}' is a callable without a __name__; name it in a dict instead"
            )
        return {name: value}
    raise ToolLoadingError(
        f"'{spec}' is of type {type(value).__name__}; expected a dict of tools (name -> callable) "
        "or a callable"
    )


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
