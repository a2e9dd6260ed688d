"""How the active PolicySnapshot shapes a program before it may run: tools and models it may
call, and budgets (a missing budget gets the policy's cap; one above the cap is refused)."""

from __future__ import annotations

from governance.policy import PolicySnapshot
from kernel import Program, StepType

BUDGETS = ("max_steps", "max_tokens", "max_duration_seconds", "max_cost_usd")


def refused_calls(program: Program, policy: PolicySnapshot, llm_model: str | None) -> list[str]:
    """Why the policy forbids the tools or models this program calls (empty: it does not)."""
    reasons = []
    for step in program.all_steps():
        if step.type is StepType.TOOL and step.tool and not policy.allows_tool(step.tool):
            reasons.append(f"step '{step.id}' calls tool '{step.tool}', which is not allowed")
        if step.type is StepType.LLM and policy.models_allow is not None:
            model = step.model or llm_model
            allowed = ", ".join(policy.models_allow) or "none"
            if model is None:
                reasons.append(f"step '{step.id}' names no model; set 'model' to one of: {allowed}")
            elif not policy.allows_model(model):
                reasons.append(f"step '{step.id}' uses model '{model}'; allowed models: {allowed}")
    return reasons


def budgeted(program: Program, policy: PolicySnapshot) -> tuple[Program, list[str]]:
    """The program with the policy's caps as its missing budgets, and the budgets above caps."""
    data, over = program.to_dict(), []
    for name in BUDGETS:
        raw = getattr(policy, name)
        if raw is None:
            continue
        cap = float(raw) if name == "max_cost_usd" else raw
        own = getattr(program, name)
        if own is None:
            data[name] = cap
        elif own > cap:
            over.append(
                f"{name} {own} is above the cap {cap}; lower it, or leave it out to get {cap}"
            )
    if over or data == program.data:
        return program, over
    return Program.from_dict(data), over
