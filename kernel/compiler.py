"""Load-time compilation: bind references, parse conditions, precompute control flow.

Runs once per Program (from its model validator). Everything that can be known before a run is
decided here, so the VM's hot loop does dictionary lookups and calls precompiled closures only.
All problems are collected and reported together, each naming the step and the field.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from kernel.errors import ExpressionError
from kernel.expressions import Condition, compile_condition
from kernel.json_schema import SchemaError
from kernel.references import NAME_PATTERN, Reference, Template, parse_template, render
from kernel.statuses import OnError, StepType
from kernel.structured_output import check_output_schema

if TYPE_CHECKING:
    from kernel.program import Program, Step

WEBHOOK_VARIABLE = "__webhook__"

Lookup = Callable[["BoundRef"], Any]
ValueBuilder = Callable[[Lookup], Any]


class ProgramProblems(ValueError):
    """Every structural problem of a program (a ValueError, so pydantic reports it)."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class BoundRef:
    """A reference with its meaning decided: a step's output, or a variable (context/output_key)."""

    ref: Reference
    step: str | None
    name: str
    path: tuple[str | int, ...]
    reader: str  # the step that reads it, for error messages


_NO_BINDINGS: Mapping[Reference, BoundRef] = MappingProxyType({})


@dataclass(slots=True)
class CompiledStep:
    step: Step
    id: str
    type: StepType
    index: int  # position among top-level steps; -1 for parallel children
    parent: str | None
    on_error: OnError
    successor: str | None = None  # where control goes after a non-condition step (None: end)
    then_target: str | None = None
    else_target: str | None = None
    condition: Condition | None = None
    # the condition's refs; the others share one empty mapping (one dict less per step)
    bindings: Mapping[Reference, BoundRef] = field(default_factory=lambda: _NO_BINDINGS)
    args: ValueBuilder | None = None
    prompt: ValueBuilder | None = None
    system: ValueBuilder | None = None
    children: tuple[CompiledStep, ...] = ()
    references: tuple[BoundRef, ...] = ()


@dataclass(slots=True)
class CompiledProgram:
    steps: dict[str, CompiledStep]
    top_level: tuple[CompiledStep, ...]
    output_keys: dict[str, str]  # output_key -> first step id that sets it
    branch_targets: frozenset[str]
    problems: list[str] = field(default_factory=list)

    @property
    def first(self) -> str:
        return self.top_level[0].id


class _Binder:
    """Binds references of one program; collects problems instead of stopping at the first."""

    def __init__(self, step_ids: set[str], output_keys: dict[str, str]) -> None:
        self.step_ids = step_ids
        self.output_keys = output_keys
        self.problems: list[str] = []

    def bind(self, ref: Reference, reader: str, where: str) -> BoundRef | None:
        if ref.root in self.step_ids:
            if ref.path and ref.path[0] != "output":
                self.problems.append(
                    f"step '{reader}', field '{where}': '{ref.text}' - a step exposes only its "
                    f"output; write '${ref.root}.output.{'.'.join(map(str, ref.path))}'"
                )
                return None
            return BoundRef(ref, ref.root, ref.root, ref.path[1:] if ref.path else (), reader)
        if ref.path and ref.path[0] == "output" and ref.root not in self.output_keys:
            self.problems.append(
                f"step '{reader}', field '{where}': '{ref.text}' refers to unknown step "
                f"'{ref.root}'"
            )
            return None
        return BoundRef(ref, None, ref.root, ref.path, reader)

    def builder(self, value: Any, reader: str, where: str, refs: list[BoundRef]) -> ValueBuilder:
        """Compile a value (str templates, nested dicts/lists) into a function of a lookup.

        Containers are rebuilt on every call so a tool that mutates its arguments cannot alter
        the program.
        """
        if isinstance(value, str):
            parsed = parse_template(value)
            if isinstance(parsed, Reference):
                bound = self.bind(parsed, reader, where)
                if bound is None:
                    return lambda lookup: None
                refs.append(bound)
                return lambda lookup: lookup(bound)
            if isinstance(parsed, Template):
                parts: list[str | BoundRef] = []
                for part in parsed.parts:
                    if isinstance(part, str):
                        parts.append(part)
                        continue
                    bound_part = self.bind(part, reader, where)
                    if bound_part is not None:
                        refs.append(bound_part)
                        parts.append(bound_part)
                frozen = tuple(parts)
                return lambda lookup: "".join(
                    p if isinstance(p, str) else render(lookup(p)) for p in frozen
                )
            text = parsed
            return lambda lookup: text
        if isinstance(value, dict):
            items = [(k, self.builder(v, reader, f"{where}.{k}", refs)) for k, v in value.items()]
            return lambda lookup: {k: b(lookup) for k, b in items}
        if isinstance(value, list):
            elems = [self.builder(v, reader, f"{where}[{i}]", refs) for i, v in enumerate(value)]
            return lambda lookup: [b(lookup) for b in elems]
        return lambda lookup: value


def compile_program(program: Program) -> CompiledProgram:
    """Compile `program` or raise ValueError listing every structural problem."""
    problems: list[str] = []
    top = program.steps
    all_steps: list[Step] = []
    child_parent: dict[str, str] = {}
    for step in top:
        all_steps.append(step)
        if step.parallel_steps:
            for child in step.parallel_steps:
                all_steps.append(child)
                child_parent[child.id] = step.id

    seen: set[str] = set()
    keyed: list[Step] = []
    match_name = NAME_PATTERN.match
    for step in all_steps:
        step_id = step.id
        if not match_name(step_id):
            problems.append(
                f"step '{step_id}': id must start with a letter or '_' and contain only letters, "
                "digits and '_' (so that '$id.output' references are unambiguous)"
            )
        if step_id in seen:
            problems.append(f"step '{step_id}': duplicate step id")
        seen.add(step_id)
        if step.output_key is not None:
            keyed.append(step)
    top_ids = {s.id for s in top}

    output_keys: dict[str, str] = {}
    for step in keyed:
        key = step.output_key
        assert key is not None
        if key in seen:
            problems.append(f"step '{step.id}', field 'output_key': '{key}' is also a step id")
        elif key == WEBHOOK_VARIABLE or not NAME_PATTERN.match(key):
            problems.append(f"step '{step.id}', field 'output_key': '{key}' is not a valid name")
        output_keys.setdefault(key, step.id)

    def check_target(step: Step, name: str, target: str | None) -> None:
        if target is None or target in top_ids:
            return
        if target in child_parent:
            problems.append(
                f"step '{step.id}', field '{name}': '{target}' is inside parallel block "
                f"'{child_parent[target]}'; jumps must target top-level steps"
            )
        else:
            problems.append(f"step '{step.id}', field '{name}': no step has id '{target}'")

    branch_targets: set[str] = set()
    for step in top:
        if step.next_step is not None:
            check_target(step, "next_step", step.next_step)
        if step.type is StepType.CONDITION:
            check_target(step, "then", step.then)
            check_target(step, "otherwise", step.otherwise)
            branch_targets.update(t for t in (step.then, step.otherwise) if t is not None)
            if step.then is None and step.otherwise is None:
                problems.append(f"step '{step.id}': a condition needs 'then' or 'otherwise'")
            if step.next_step is not None or step.is_terminal:
                problems.append(
                    f"step '{step.id}': a condition chooses its successor with then/otherwise; "
                    "'next_step' and 'is_terminal' do not apply"
                )
        if step.depends_on is not None:
            problems.append(
                f"step '{step.id}', field 'depends_on': only steps inside a parallel block may "
                "depend on their siblings"
            )
    _check_children(top, problems)

    binder = _Binder(seen, output_keys)
    compiled: dict[str, CompiledStep] = {}
    top_compiled: list[CompiledStep] = []
    for index, step in enumerate(top):
        following = top[index + 1].id if index + 1 < len(top) else None
        node = _compile_step(step, index, None, binder, problems)
        if step.type is StepType.CONDITION:
            node.then_target = step.then if step.then is not None else following
            node.else_target = step.otherwise if step.otherwise is not None else following
        elif step.is_terminal:
            node.successor = None
        elif step.next_step is not None:
            node.successor = step.next_step
        elif step.id in branch_targets:
            node.successor = None  # a branch target ends the run unless it says next_step
        else:
            node.successor = following
        if step.parallel_steps:
            children = []
            for child in step.parallel_steps:
                child_node = _compile_step(child, -1, step, binder, problems)
                compiled[child.id] = child_node
                children.append(child_node)
            node.children = tuple(_topological(children, step.id, problems))
        compiled[step.id] = node
        top_compiled.append(node)
    problems.extend(binder.problems)
    _check_sibling_references(top_compiled, problems)
    if problems:
        raise ProgramProblems(problems)
    return CompiledProgram(compiled, tuple(top_compiled), output_keys, frozenset(branch_targets))


def _compile_step(
    step: Step, index: int, parent: Step | None, binder: _Binder, problems: list[str]
) -> CompiledStep:
    on_error = step.on_error
    if on_error is None:
        on_error = parent.effective_on_error if parent is not None else OnError.FAIL
    node = CompiledStep(step, step.id, step.type, index, parent.id if parent else None, on_error)
    if (
        step.condition is None
        and step.args is None
        and step.prompt is None
        and step.system is None
        and step.output_schema is None
    ):
        return node  # nothing to bind or check (most tool steps of a long program)
    refs: list[BoundRef] = []
    if step.condition is not None:
        try:
            node.condition = compile_condition(step.condition)
        except ExpressionError as exc:
            problems.append(f"step '{step.id}', field 'condition': {exc}")
        else:
            bindings: dict[Reference, BoundRef] = {}
            for ref in node.condition.references:
                bound = binder.bind(ref, step.id, "condition")
                if bound is not None:
                    refs.append(bound)
                    bindings[ref] = bound
            node.bindings = bindings
    if step.type is StepType.TOOL and step.args is not None:
        node.args = binder.builder(step.args, step.id, "args", refs)
    if step.prompt is not None:
        node.prompt = binder.builder(step.prompt, step.id, "prompt", refs)
    if step.system is not None:
        node.system = binder.builder(step.system, step.id, "system", refs)
    if step.output_schema is not None:
        try:
            check_output_schema(step.output_schema)
        except SchemaError as exc:
            problems.append(f"step '{step.id}', field 'output_schema': {exc}")
    node.references = tuple(refs)
    return node


def _check_children(top: list[Step], problems: list[str]) -> None:
    for block in top:
        for child in block.parallel_steps or ():
            where = f"step '{child.id}' (in parallel block '{block.id}')"
            if child.type not in (StepType.TOOL, StepType.LLM):
                problems.append(f"{where}: only tool and llm steps can run in a parallel block")
            for name in ("next_step", "is_terminal"):
                if name in child.model_fields_set:
                    problems.append(f"{where}: field '{name}' does not apply inside a block")
            siblings = {c.id for c in block.parallel_steps or ()}
            for dep in child.depends_on or ():
                if dep not in siblings or dep == child.id:
                    problems.append(
                        f"{where}, field 'depends_on': '{dep}' is not another step of this block"
                    )


def _topological(
    children: list[CompiledStep], block: str, problems: list[str]
) -> list[CompiledStep]:
    """Children in an order where every step comes after its dependencies (declaration order
    among independent ones, so the order, and hence the state hashes, are deterministic)."""
    remaining = {c.id: set(c.step.depends_on or ()) for c in children}
    ordered: list[CompiledStep] = []
    done: set[str] = set()
    while len(ordered) < len(children):
        ready = [c for c in children if c.id not in done and remaining[c.id] <= done]
        if not ready:
            stuck = sorted(c.id for c in children if c.id not in done)
            problems.append(
                f"step '{block}', field 'depends_on': dependency cycle among {', '.join(stuck)}"
            )
            return children
        ordered.extend(ready)
        done.update(c.id for c in ready)
    return ordered


def _check_sibling_references(top: list[CompiledStep], problems: list[str]) -> None:
    """A child may read a sibling's output only if it depends on it (otherwise it is a race)."""
    for block in top:
        if not block.children:
            continue
        siblings = {c.id for c in block.children}
        for child in block.children:
            deps = set(child.step.depends_on or ())
            for ref in child.references:
                if ref.step == block.id:
                    problems.append(
                        f"step '{child.id}': '{ref.ref.text}' reads the output of its own block "
                        f"'{block.id}', which exists only after every child has finished"
                    )
                elif ref.step in siblings and ref.step not in deps:
                    problems.append(
                        f"step '{child.id}': '{ref.ref.text}' reads sibling '{ref.step}' - add "
                        f"'{ref.step}' to depends_on so it runs first"
                    )
