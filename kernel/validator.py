"""Static analysis of a program against the VM it will run on.

Load time (kernel.compiler) already rejects what is malformed. This adds what depends on the
runtime or on the whole graph: unknown tools, llm steps without an adapter, cycles with no
max_steps (errors), and unreachable steps or fall-through into a branch target (warnings).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from kernel.compiler import CompiledProgram, CompiledStep
from kernel.program import Program
from kernel.statuses import StepType
from kernel.tool_args import ArgsCheck, literal_view
from kernel.tools import args_check_of


class Severity(StrEnum):
    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True, slots=True)
class Finding:
    severity: Severity
    step_id: str | None
    field: str | None
    message: str

    def __str__(self) -> str:
        where = f"step '{self.step_id}'" if self.step_id else "program"
        if self.field:
            where += f", field '{self.field}'"
        return f"{where}: {self.message}"


@dataclass(slots=True)
class ValidationReport:
    findings: list[Finding] = field(default_factory=list)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity is Severity.ERROR]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity is Severity.WARNING]

    @property
    def ok(self) -> bool:
        return not self.errors


class ProgramValidator:
    """`tools`: names the VM can call (None: not checked); given as a mapping of names to
    tools, a tool that declares its inputs also has each step's literal `args` checked.
    `llm`: whether an adapter is configured (None: not checked)."""

    def __init__(
        self, tools: Iterable[str] | Mapping[str, Any] | None = None, llm: bool | None = None
    ) -> None:
        self.tools = None if tools is None else frozenset(tools)
        self._arg_checks: dict[str, ArgsCheck] = {}
        if isinstance(tools, Mapping):
            for name, tool in tools.items():
                check = args_check_of(tool)
                if check is not None:
                    self._arg_checks[name] = check
        self.llm = llm

    def validate(self, program: Program) -> ValidationReport:
        report = ValidationReport()
        compiled = program.compiled
        add = report.findings.append
        for node in compiled.steps.values():
            step = node.step
            if (
                node.type is StepType.TOOL
                and self.tools is not None
                and step.tool not in self.tools
            ):
                add(Finding(Severity.ERROR, node.id, "tool", _unknown_tool(step.tool, self.tools)))
            check = self._arg_checks.get(step.tool or "") if node.type is StepType.TOOL else None
            if check is not None and step.args is not None:
                for problem in check(literal_view(step.args)):
                    where = f"args.{problem.field}" if problem.field else "args"
                    add(Finding(Severity.ERROR, node.id, where, problem.message))
            if node.type is StepType.LLM and self.llm is False:
                add(
                    Finding(
                        Severity.ERROR,
                        node.id,
                        "type",
                        "llm step but the VM has no LLM adapter (pass llm=...)",
                    )
                )
            if node.type is StepType.CONDITION and step.on_error is not None:
                add(
                    Finding(
                        Severity.WARNING,
                        node.id,
                        "on_error",
                        "ignored: a condition that cannot be evaluated always fails the run",
                    )
                )
        cycle = _find_cycle(compiled)
        if cycle and program.max_steps is None:
            add(
                Finding(
                    Severity.ERROR,
                    cycle[0],
                    "next_step",
                    f"steps {' -> '.join(cycle)} form a cycle and the program has no "
                    "max_steps: add a max_steps budget so the loop cannot run forever",
                )
            )
        reachable = _reachable(compiled)
        for node in compiled.top_level:
            if node.id not in reachable:
                add(Finding(Severity.WARNING, node.id, None, "unreachable: no path leads here"))
        for before, after in zip(compiled.top_level, compiled.top_level[1:], strict=False):
            if after.id in compiled.branch_targets and before.successor == after.id:
                add(
                    Finding(
                        Severity.WARNING,
                        before.id,
                        None,
                        f"falls through into branch target '{after.id}', which ends the run; "
                        "mark it is_terminal or give it next_step if that is not intended",
                    )
                )
        return report


def _unknown_tool(name: str | None, tools: frozenset[str]) -> str:
    close = difflib.get_close_matches(name or "", sorted(tools), n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    known = ", ".join(sorted(tools)) or "none"
    return f"tool '{name}' is not registered ({hint}registered tools: {known})"


def _successors(node: CompiledStep) -> list[str]:
    if node.type is StepType.CONDITION:
        return [t for t in (node.then_target, node.else_target) if t is not None]
    return [node.successor] if node.successor is not None else []


def _reachable(compiled: CompiledProgram) -> set[str]:
    seen = {compiled.first}
    stack = [compiled.first]
    while stack:
        for nxt in _successors(compiled.steps[stack.pop()]):
            if nxt not in seen:
                seen.add(nxt)
                stack.append(nxt)
    return seen


def _find_cycle(compiled: CompiledProgram) -> list[str] | None:
    """One cycle reachable from the first step, as a path that returns to its start (iterative
    DFS: a 10,000-step program must not hit the recursion limit)."""
    on_path: dict[str, int] = {}
    path: list[str] = []
    finished: set[str] = set()
    stack: list[tuple[str, int]] = [(compiled.first, 0)]
    while stack:
        step_id, i = stack.pop()
        if i == 0:
            on_path[step_id] = len(path)
            path.append(step_id)
        nexts = _successors(compiled.steps[step_id])
        if i < len(nexts):
            stack.append((step_id, i + 1))
            nxt = nexts[i]
            if nxt in on_path:
                return [*path[on_path[nxt] :], nxt]
            if nxt not in finished:
                stack.append((nxt, 0))
            continue
        finished.add(step_id)
        del on_path[step_id]
        path.pop()
    return None
