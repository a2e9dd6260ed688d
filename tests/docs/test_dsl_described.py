"""The Program DSL is described alike in its three texts: docs/dsl.md, the MCP `write_program`
prompt and the planner's prompt. Each names every field of the models, and every example
program in each loads and validates as `ledgerflow validate` would check it.

Rules (so that a field added to a model fails here until it is documented):
- A field is described when its JSON name appears in the text as an inline-code span, `name`,
  or as a double-quoted string, "name" (a JSON key, or how the planner's prompt quotes fields).
- Whole-program examples are, in Markdown, every ```json or ```yaml fenced block and, in a
  prompt, the JSON object that starts at the first `{` after each word "Example". Fragments
  (a step's shape, `{child_id: output}`) are therefore never fenced as json/yaml in Markdown
  and never follow an "Example" label in a prompt.
"""

from __future__ import annotations

import json
import re
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import pytest
from pydantic import AliasChoices, BaseModel
from pydantic.fields import FieldInfo

from gateway.mcp.dsl_guide import DSL_GUIDE
from kernel import Program, ProgramError, ProgramValidator
from kernel.planner import SYSTEM_PROMPT

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True, slots=True)
class Text:
    name: str
    body: str
    markdown: bool


TEXTS = [
    Text("docs/dsl.md", (ROOT / "docs" / "dsl.md").read_text(encoding="utf-8"), markdown=True),
    Text("gateway/mcp/dsl_guide.py (DSL_GUIDE)", DSL_GUIDE, markdown=False),
    Text("kernel/planner.py (SYSTEM_PROMPT)", SYSTEM_PROMPT, markdown=False),
]


@dataclass(frozen=True, slots=True)
class Example:
    where: str  # "<text>, line <n>"
    language: str  # "json" or "yaml"
    source: str


# --- the fields, from the models ---------------------------------------------------------------


def dsl_models(root: type[BaseModel] = Program) -> list[type[BaseModel]]:
    """`root` and every model reachable through its fields' annotations (Step, Backoff, ...)."""
    found: list[type[BaseModel]] = []
    pending = [root]
    while pending:
        model = pending.pop(0)
        if model in found:
            continue
        found.append(model)
        for info in model.model_fields.values():
            pending.extend(_models_in(info.annotation))
    return found


def _models_in(annotation: Any) -> Iterator[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
    for arg in get_args(annotation):  # list[Step], Step | None, dict[str, Backoff], ...
        yield from _models_in(arg)


def json_name(name: str, info: FieldInfo) -> str:
    """The key a user writes in a program for this field."""
    alias = info.validation_alias
    if isinstance(alias, str):
        return alias
    if isinstance(alias, AliasChoices):
        for choice in alias.choices:
            if isinstance(choice, str):
                return choice
    return info.alias or name


def dsl_fields() -> dict[str, list[str]]:
    """JSON field name -> the model fields it names ("Step.description", ...)."""
    fields: dict[str, list[str]] = {}
    for model in dsl_models():
        for name, info in model.model_fields.items():
            fields.setdefault(json_name(name, info), []).append(f"{model.__name__}.{name}")
    return fields


def is_described(field: str, body: str) -> bool:
    return f"`{field}`" in body or f'"{field}"' in body


# --- the examples, from the texts --------------------------------------------------------------

_FENCE = re.compile(
    r"^(?P<indent>[ \t]*)```(?P<lang>json|yaml)[ \t]*\n(?P<body>.*?)^(?P=indent)```",
    re.MULTILINE | re.DOTALL,
)
_EXAMPLE_LABEL = re.compile(r"\bExample\b")


def _line(body: str, index: int) -> int:
    return body.count("\n", 0, index) + 1


def examples(text: Text) -> list[Example]:
    found: list[Example] = []
    if text.markdown:
        for fence in _FENCE.finditer(text.body):
            where = f"{text.name}, line {_line(text.body, fence.start())}"
            found.append(Example(where, fence["lang"], textwrap.dedent(fence["body"])))
        return found
    for label in _EXAMPLE_LABEL.finditer(text.body):
        start = text.body.find("{", label.end())
        if start < 0:
            continue
        try:
            _, end = json.JSONDecoder().raw_decode(text.body, start)
        except json.JSONDecodeError:
            end = len(text.body)  # let the loader report the JSON error
        where = f"{text.name}, line {_line(text.body, start)}"
        found.append(Example(where, "json", text.body[start:end]))
    return found


ALL_EXAMPLES = [example for text in TEXTS for example in examples(text)]


def validation_errors(example: Example) -> list[str]:
    """What `ledgerflow validate` (no --tools, no --llm) reports as errors for the example."""
    try:
        if example.language == "json":
            program = Program.from_json(example.source)
        else:
            program = Program.from_yaml(example.source)
    except ProgramError as exc:
        return exc.problems or [str(exc)]
    return [str(finding) for finding in ProgramValidator().validate(program).errors]


# --- the tests ---------------------------------------------------------------------------------


def test_the_models_walked_include_the_nested_ones() -> None:
    names = {model.__name__ for model in dsl_models()}
    assert {"Program", "Step", "Backoff"} <= names


@pytest.mark.parametrize("text", TEXTS, ids=[text.name for text in TEXTS])
def test_every_dsl_field_is_described(text: Text) -> None:
    missing = [
        f"{field} ({', '.join(owners)})"
        for field, owners in dsl_fields().items()
        if not is_described(field, text.body)
    ]
    assert not missing, (
        f'{text.name} does not describe these fields (write them as `name` or "name"): '
        + "; ".join(missing)
    )


@pytest.mark.parametrize("text", TEXTS, ids=[text.name for text in TEXTS])
def test_every_text_has_an_example_program(text: Text) -> None:
    assert examples(text), f"{text.name}: no example program found"


@pytest.mark.parametrize("example", ALL_EXAMPLES, ids=[example.where for example in ALL_EXAMPLES])
def test_example_program_loads_and_validates(example: Example) -> None:
    errors = validation_errors(example)
    assert not errors, f"the example at {example.where} does not load: " + "; ".join(errors)
