"""Projection: prompts, traces and tools each see only what they may."""

from __future__ import annotations

from typing import Any

from kernel import ExecutionVM, InMemoryJournal, Program, StepRecord, Trace, TraceStatus
from kernel.adapters import MockLLMAdapter
from kernel.capability import TOMBSTONE, CapabilityRef, InMemorySecretResolver
from kernel.projection import Projector
from kernel.redaction import RedactionRules
from kernel.tools import reads_secrets
from tests.conftest import tool

CARD = "4111-1111-1111-1111-SECRET"


class RecordingJournal(InMemoryJournal):
    def __init__(self) -> None:
        super().__init__()
        self.payloads: list[Any] = []

    async def step_recorded(
        self, trace: Trace, record: StepRecord, state_hash: str, payload: Any
    ) -> None:
        self.payloads.append(payload)


def program() -> Program:
    return Program.from_dict(
        {
            "name": "charge",
            "steps": [
                {
                    "id": "explain",
                    "type": "llm",
                    "prompt": "Explain the charge on card $card for $customer (token $api_token)",
                },
                tool("charge", args={"card": "$card", "amount": 10}),
                tool("notify", args={"card": "$card"}),
            ],
        }
    )


def tools(seen: dict[str, Any]) -> dict[str, Any]:
    @reads_secrets
    def charge(card: str, amount: int) -> dict[str, Any]:
        seen["charge"] = card
        return {"charged": amount, "echo": f"used {card}"}

    def notify(card: str) -> str:
        seen["notify"] = card
        return "sent"

    return {"charge": charge, "notify": notify}


async def run_with_secret() -> tuple[
    Trace, MockLLMAdapter, dict[str, Any], RecordingJournal, InMemorySecretResolver, CapabilityRef
]:
    secrets = InMemorySecretResolver()
    ref = secrets.put(CARD, subject="cust-1")
    llm, seen, journal = MockLLMAdapter("ok"), {}, RecordingJournal()
    vm = ExecutionVM(tools=tools(seen), llm=llm, secrets=secrets, journal=journal)
    trace = await vm.run(
        program(), context={"card": ref.uri, "customer": "ann@example.com", "api_token": "tok-123"}
    )
    return trace, llm, seen, journal, secrets, ref


async def test_secret_never_reaches_prompts_nor_the_serialized_trace() -> None:
    trace, llm, seen, journal, _, ref = await run_with_secret()
    assert trace.status is TraceStatus.SUCCESS
    prompt = llm.prompts[0]
    assert CARD not in prompt and "[SECRET]" in prompt
    assert "ann@example.com" not in prompt and "[EMAIL]" in prompt
    assert "tok-123" not in prompt and "[REDACTED]" in prompt
    assert CARD not in trace.model_dump_json()
    assert CARD not in repr(journal.payloads)
    # The tool that declared it reads secrets got the value; its echo was scrubbed to the ref.
    assert seen["charge"] == CARD
    assert trace.step("charge").output == {"charged": 10, "echo": f"used {ref.uri}"}


async def test_tool_that_did_not_declare_the_capability_gets_the_ref() -> None:
    _, _, seen, _, _, ref = await run_with_secret()
    assert seen["notify"] == ref.uri


async def test_journal_payloads_carry_the_ref_and_a_commitment() -> None:
    _, _, _, journal, secrets, ref = await run_with_secret()
    charge_payload = journal.payloads[1]
    assert charge_payload["echo"] == f"used {ref.uri}"
    projected = Projector(secrets).for_trace({"card": ref.uri})
    assert projected == {"card": {"$ref": ref.uri, "commitment": secrets.commitment(ref)}}
    assert len(projected["card"]["commitment"]) == 64


async def test_erased_ref_projects_as_tombstone_everywhere_and_tools_fail_closed() -> None:
    secrets = InMemorySecretResolver()
    ref = secrets.put(CARD, subject="cust-1")
    secrets.erase_subject("cust-1")
    projector = Projector(secrets)
    assert projector.for_trace({"card": ref.uri, "note": f"card {ref.uri}"}) == {
        "card": TOMBSTONE,
        "note": f"card {TOMBSTONE}",
    }
    assert projector.for_llm(ref.uri) == TOMBSTONE
    llm = MockLLMAdapter("ok")
    seen: dict[str, Any] = {}
    vm = ExecutionVM(tools=tools(seen), llm=llm, secrets=secrets)
    trace = await vm.run(program(), context={"card": ref.uri, "customer": "c", "api_token": "t"})
    assert TOMBSTONE in llm.prompts[0]
    assert trace.status is TraceStatus.FAILED
    assert "erased" in (trace.error or "")
    assert "charge" not in seen


def test_field_rules_match_whole_words() -> None:
    rules = RedactionRules()
    redacted = rules.redact(
        {
            "tokens_used": 12,
            "api_token": "x",
            "accessToken": "y",
            "password": "p",
            "nested": [{"client_secret": "s", "total": 3}],
        }
    )
    assert redacted == {
        "tokens_used": 12,
        "api_token": "[REDACTED]",
        "accessToken": "[REDACTED]",
        "password": "[REDACTED]",
        "nested": [{"client_secret": "[REDACTED]", "total": 3}],
    }


def test_personal_data_patterns_are_redacted_with_checks() -> None:
    rules = RedactionRules(national_ids={"ssn": r"\b\d{3}-\d{2}-\d{4}\b"})
    text = (
        "mail a.b@example.com, call +44 20 7946 0958, card 4111 1111 1111 1111, "
        "not a card 4111 1111 1111 1112, iban GB82 WEST 1234 5698 7654 32, ssn 123-45-6789, "
        "on 2026-11-24 pay 1500"
    )
    assert rules.redact(text) == (
        "mail [EMAIL], call [PHONE], card [CARD], not a card 4111 1111 1111 1112, "
        "iban [IBAN], ssn [SSN], on 2026-11-24 pay 1500"
    )


async def test_reference_to_a_sensitive_field_is_redacted_in_the_prompt() -> None:
    llm = MockLLMAdapter("ok")
    program = Program.from_dict(
        {
            "name": "p",
            "steps": [
                {"id": "ask", "type": "llm", "prompt": "key=$cfg.api_key tokens=$cfg.tokens_used"}
            ],
        }
    )
    await ExecutionVM(llm=llm).run(program, {"cfg": {"api_key": "sk-live-1", "tokens_used": 7}})
    assert llm.prompts == ["key=[REDACTED] tokens=7"]
