"""Reading the command line's inputs: program files, `--context`, `--event` and `--tools`.

Problems with them are UsageErrors (exit code 2), except a program whose content is invalid:
that is a ProgramError, which `validate` reports as findings and `run` as a usage error.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gateway.cli.errors import UsageError
from gateway.tools.loading import Tool, ToolLoadingError, load_tools
from kernel import Program

PROGRAM_SUFFIXES = (".json", ".yaml", ".yml")


def load_program(path: str) -> Program:
    """Load a program file; unreadable files are UsageErrors, bad content a ProgramError."""
    if not path.lower().endswith(PROGRAM_SUFFIXES):
        raise UsageError(f"program file {path} must end in .json, .yaml or .yml")
    read_text(path, "program file")  # Program.from_file does not catch bad encodings
    return Program.from_file(path)


def parse_context(raw: str | None) -> dict[str, Any] | None:
    """`--context`: inline JSON or `@path`; it must be a JSON object."""
    if raw is None:
        return None
    source = "--context"
    if raw.startswith("@"):
        source = f"context file {raw[1:]}"
        raw = read_text(raw[1:], "context file")
    try:
        value = json.loads(raw, parse_constant=_reject_constant)
    except ValueError as exc:  # JSONDecodeError is a ValueError
        raise UsageError(f"{source} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise UsageError(f"{source} must be a JSON object, got {_json_kind(value)}")
    return value


def parse_event(raw: str) -> Any:
    """`--event`: any JSON value, inline or `@path`."""
    source = "--event"
    if raw.startswith("@"):
        source = f"event file {raw[1:]}"
        raw = read_text(raw[1:], "event file")
    try:
        return json.loads(raw, parse_constant=_reject_constant)
    except ValueError as exc:
        raise UsageError(f"{source} is not valid JSON: {exc}") from None


def load_tool_specs(specs: list[str] | None) -> dict[str, Tool] | None:
    """The tools of every `--tools` spec, or None when the flag was not given."""
    if not specs:
        return None
    try:
        return load_tools(specs)
    except ToolLoadingError as exc:
        raise UsageError(str(exc)) from None


def read_text(path: str, what: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise UsageError(f"cannot read {what} {path}: it is not UTF-8 text") from None


def _reject_constant(name: str) -> Any:
    # Python's json accepts NaN and Infinity; JSON (and the trace hashes) do not.
    raise ValueError(f"{name} is not a JSON value")


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    kinds = {list: "an array", str: "a string", bool: "a boolean"}
    return kinds.get(type(value), "a number")
