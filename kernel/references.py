"""`$references` and the templates that embed them.

A reference is `$name` or `$name.seg.seg` (segments are names or list indexes), optionally braced as
`${name.seg}` to separate it from following text. `$$` is a literal dollar sign. A `$` not followed
by a name (as in `$5`) is literal text. Parsing is pure; what a name means (context key, step id,
output key) is decided by the program compiler, and values are looked up by the VM.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_PATH = rf"{_NAME}(?:\.(?:{_NAME}|\d+))*"
_TOKEN = re.compile(rf"\$\$|\$\{{({_PATH})\}}|\$({_PATH})")
_WHOLE = re.compile(rf"\$\{{({_PATH})\}}|\$({_PATH})")
NAME_PATTERN = re.compile(rf"^{_NAME}$")


@dataclass(frozen=True, slots=True)
class Reference:
    """A parsed `$root.path` reference; `text` is how it was written, for error messages."""

    root: str
    path: tuple[str | int, ...]
    text: str


def parse_reference(body: str, text: str | None = None) -> Reference:
    """Parse the part after `$` (already known to match the reference syntax)."""
    root, *rest = body.split(".")
    path = tuple(int(seg) if seg.isdigit() else seg for seg in rest)
    return Reference(root=root, path=path, text=text if text is not None else "$" + body)


def whole_reference(value: str) -> Reference | None:
    """The reference if `value` is exactly one reference (its type is then kept), else None."""
    match = _WHOLE.fullmatch(value)
    if match is None:
        return None
    return parse_reference(match.group(1) or match.group(2), value)


@dataclass(frozen=True, slots=True)
class Template:
    """Text with embedded references: `parts` alternate literal text and references."""

    parts: tuple[str | Reference, ...]

    @property
    def references(self) -> tuple[Reference, ...]:
        return tuple(p for p in self.parts if isinstance(p, Reference))


def parse_template(value: str) -> Reference | Template | str:
    """A whole reference, a template with references, or plain text (after `$$` unescaping)."""
    whole = whole_reference(value)
    if whole is not None:
        return whole
    if "$" not in value:
        return value
    parts: list[str | Reference] = []
    literal: list[str] = []
    pos = 0
    for match in _TOKEN.finditer(value):
        literal.append(value[pos : match.start()])
        pos = match.end()
        if match.group(0) == "$$":
            literal.append("$")
            continue
        if any(literal):
            parts.append("".join(literal))
        literal = []
        parts.append(parse_reference(match.group(1) or match.group(2), match.group(0)))
    literal.append(value[pos:])
    if any(literal):
        parts.append("".join(literal))
    if not any(isinstance(p, Reference) for p in parts):
        return "".join(p for p in parts if isinstance(p, str))
    return Template(tuple(parts))


def render(value: Any) -> str:
    """How a value reads inside text: strings as they are, everything else as JSON."""
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, ensure_ascii=False, default=str)
    except ValueError:
        return str(value)
