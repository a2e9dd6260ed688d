"""The Planner: an intent in plain words becomes a validated Program, written by an LLM.

The model's reply is probabilistic, so it is trusted for nothing: it must load as a Program, pass
the validator against the tools it may use, read only the context keys it was given and (when
asked) contain no llm step. A rejected reply is sent back with its problems for another attempt.
Execution of the accepted program stays deterministic. Review generated programs before use.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

from kernel.compiler import WEBHOOK_VARIABLE
from kernel.errors import LedgerflowError, ProgramError
from kernel.llm import LLMAdapter, as_result
from kernel.program import Program
from kernel.statuses import StepType
from kernel.validator import ProgramValidator


class PlannerError(LedgerflowError):
    """No valid program after the last attempt. `attempts[i]` lists attempt i's problems."""

    def __init__(self, message: str, attempts: list[list[str]]) -> None:
        super().__init__(message)
        self.attempts = attempts


SYSTEM_PROMPT = """\
You write programs for ledgerflow, a deterministic workflow runtime. Reply with the program as \
one JSON object and nothing else.

Program: {"name": "snake_case_name", "steps": [step, ...]} plus optional "description" and \
budgets that stop the run: "max_steps", "max_tokens", "max_stalled_steps" (ints >= 1), \
"max_duration_seconds", "max_cost_usd" (numbers > 0).
Steps run in array order. Every step has a unique "id" (letters, digits and _, not starting \
with a digit) and a "type":
- tool: "tool" (one of the allowed tools), "args" (the tool's keyword arguments), \
"output_key" (optional), "timeout_seconds" with "on_timeout": "fail" | "fallback", \
"suspend_timeout_seconds" with "on_suspend_timeout": "fail" | "continue" (a deadline for the \
event a suspended tool waits for).
- llm: "prompt", optional "system", "allowed_outputs" (the reply must be exactly one of \
these), "output_schema" (a JSON Schema, or "json", "int", "float", "bool": the output is the \
parsed value), "model", "temperature", "options" (passed to the LLM adapter), "output_key", \
"timeout_seconds", "on_timeout". Without "output_schema" its output is the reply text.
- condition: "condition" (an expression), "then" and/or "otherwise" (step ids). It jumps to \
"then" when true and "otherwise" when false; a missing one means the next step in the array. \
A step named by then/otherwise ends the run after it runs unless it has "next_step".
- parallel: "parallel_steps" (tool or llm steps run concurrently; a child may list sibling ids \
in "depends_on" to run after them), "max_concurrency" (int >= 1, optional). Its output is \
{child_id: output}.
- wait: "seconds" (a number > 0) or "until" (an ISO 8601 time with a UTC offset): a durable \
timer; the run suspends until it fires.
Optional on top-level tool, llm, parallel and wait steps: "is_terminal": true (end the run after \
it), "next_step": step id (jump there after it; a jump backwards needs a program "max_steps"). \
Optional on any step: "description" (a note), "on_error": "fail" | "skip" | "retry", \
"max_retries" (total attempts with retry, default 3), "backoff": {"base_seconds": 1, \
"factor": 2, "max_seconds": 30} (retry n waits min(base_seconds * factor**(n-1), max_seconds) \
seconds). Use no other fields.

Values in args, prompt and system may hold references: "$key" reads a context key, \
"$step_id.output" a step's output, "$step_id.output.field.0" a path inside it, "$name" the \
output of the step whose output_key is name; "${...}" delimits a reference inside text. A \
string that is exactly one reference keeps the value's type.

Condition expressions: operands are references ($x.y), 'strings', numbers, true, false, null; \
comparisons == != < <= > >= in, not in, contains; combined with and, or, not and parentheses; \
a lone operand tests truthiness. No function calls, no arithmetic, and never compare text with \
a number.

Example (its tools are made up; use only the allowed ones): {"name": "refund", "steps": [
 {"id": "check", "type": "tool", "tool": "get_order", "args": {"order": "$order_id"}},
 {"id": "guard", "type": "condition", "condition": "$check.output.amount <= 100",
  "then": "refund", "otherwise": "escalate"},
 {"id": "refund", "type": "tool", "tool": "issue_refund", "args": {"order": "$order_id"}},
 {"id": "escalate", "type": "tool", "tool": "notify_staff", "args": {"order": "$order_id"}}]}"""

_FENCE = re.compile(r"```(?:json|JSON)?[ \t]*\n(.*?)```", re.DOTALL)


class Planner:
    """`await Planner(llm).generate(intent, available_tools, context_keys)` -> Program.

    One LLM call per attempt, at most `1 + max_retries` calls; a valid first reply costs one.
    `temperature` is passed to the adapter with every call.
    """

    def __init__(self, llm: LLMAdapter, max_retries: int = 2, temperature: float = 0.0) -> None:
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        self.llm = llm
        self.max_retries = max_retries
        self.temperature = temperature

    async def generate(
        self,
        intent: str,
        available_tools: list[str],
        context_keys: list[str] | None = None,
        *,
        allow_llm_steps: bool = True,
    ) -> Program:
        """A Program for `intent` using only `available_tools` and `context_keys`.

        Raises PlannerError when every attempt was rejected; adapter errors propagate as is.
        """
        tools = list(dict.fromkeys(available_tools))
        keys = list(dict.fromkeys(context_keys or []))
        messages: list[dict[str, Any]] = [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": _request(intent, tools, keys, allow_llm_steps)},
        ]
        attempts: list[list[str]] = []
        for _ in range(1 + self.max_retries):
            reply = as_result(await self.llm.complete(messages, temperature=self.temperature))
            program, problems = check_reply(reply.text, tools, keys, allow_llm_steps)
            if program is not None:
                return program
            attempts.append(problems)
            messages = [
                *messages,
                {"role": "assistant", "content": reply.text},
                {"role": "user", "content": _feedback(problems)},
            ]
        raise PlannerError(_summary(attempts), attempts)


def _request(intent: str, tools: list[str], keys: list[str], allow_llm_steps: bool) -> str:
    llm_rule = (
        "allowed" if allow_llm_steps else "not allowed (use tool, condition and parallel steps)"
    )
    return (
        f"Intent: {intent}\n"
        f"Allowed tools: {', '.join(tools) or 'none'}\n"
        f"Context keys: {', '.join(keys) or 'none'}\n"
        f"llm steps: {llm_rule}"
    )


def _feedback(problems: list[str]) -> str:
    listed = "\n".join(f"- {p}" for p in problems)
    return f"That program was rejected:\n{listed}\nReply with the corrected program as JSON only."


def _summary(attempts: list[list[str]]) -> str:
    lines = [f"attempt {i}: {'; '.join(p)}" for i, p in enumerate(attempts, start=1)]
    return f"no valid program after {len(attempts)} attempt(s):\n" + "\n".join(lines)


def check_reply(
    text: str, tools: Iterable[str], context_keys: Iterable[str], allow_llm_steps: bool = True
) -> tuple[Program | None, list[str]]:
    """The program in a model's reply, or None and every problem found in it."""
    try:
        data = _parse(text)
        program = Program.from_dict(data)
    except ProgramError as exc:
        return None, list(exc.problems)
    problems = [str(f) for f in ProgramValidator(tools=tools).validate(program).errors]
    problems += _context_problems(program, set(context_keys))
    if not allow_llm_steps:
        problems += _llm_step_problems(program)
    return (None, problems) if problems else (program, [])


def _parse(text: str) -> Any:
    """The JSON in a reply: a fenced block if there is one, else the text itself."""
    fenced = _FENCE.search(text)
    body = fenced.group(1) if fenced else text.strip()
    try:
        return json.loads(body)
    except json.JSONDecodeError as exc:
        raise ProgramError(f"the reply is not a JSON object: {exc}") from None


def _context_problems(program: Program, keys: set[str]) -> list[str]:
    """References to variables that are neither given context keys nor output keys, and
    context keys the program shadows (the VM would refuse that context)."""
    compiled = program.compiled
    known = keys | set(compiled.output_keys) | {WEBHOOK_VARIABLE}
    problems: list[str] = []
    for node in compiled.steps.values():
        for ref in node.references:
            if ref.step is None and ref.name not in known:
                available = ", ".join(sorted(keys)) or "none"
                problems.append(
                    f"step '{node.id}': '{ref.ref.text}' reads unknown context key '{ref.name}' "
                    f"(available context keys: {available})"
                )
    for key in sorted(keys & (set(compiled.steps) | set(compiled.output_keys))):
        problems.append(f"context key '{key}' is also a step id or output_key; rename the step")
    return list(dict.fromkeys(problems))


def _llm_step_problems(program: Program) -> list[str]:
    return [
        f"step '{node.id}': llm steps are not allowed here; use the listed tools"
        for node in program.compiled.steps.values()
        if node.type is StepType.LLM
    ]
