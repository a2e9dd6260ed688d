"""The MCP server through the SDK's in-memory client: tools, resources, prompt, governance."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Annotated, Any

import jsonschema
import pytest
from mcp import Client
from mcp.shared.inbound import validate_mcp_param_headers
from mcp.types import CallToolResult
from pydantic import Field

from examples.payments import TOOLS
from gateway.application.principal import TOOL_SCOPES, Principal, Scope
from gateway.application.service import LedgerflowService
from gateway.mcp.server import build_server
from governance import PolicySnapshot, verify_proof_bundle
from kernel import Program
from kernel.capability import TOMBSTONE
from tests.gateway.services import open_service

REPO = Path(__file__).resolve().parents[2]
PAYMENT = Program.from_file(REPO / "examples" / "payment_flow.yaml").to_dict()
ORDER = {"order_id": "A-1001", "amount": 250}
PAID = {"status": "succeeded"}
SECRET = "NL91-ABNA-0417-1643-SECRET"
READ_ONLY = {"validate_program", "get_trace", "list_traces", "get_program", "list_programs"}
READ_ONLY |= {"query_envelopes", "get_proof", "get_consistency_proof", "verify_ledger"}


@pytest.fixture
async def service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Any]:
    async with open_service(tmp_path, monkeypatch, TOOLS) as service:
        yield service


def connect(service: LedgerflowService, principal: Principal | None = None) -> Client:
    who = principal or Principal.local_operator()
    return Client(build_server(service, lambda _ctx: who))


async def ok(client: Client, tool: str, **arguments: Any) -> dict[str, Any]:
    result = await client.call_tool(tool, arguments)
    assert not result.is_error, text(result)
    assert result.structured_content is not None
    return result.structured_content


async def refused(client: Client, tool: str, **arguments: Any) -> str:
    result = await client.call_tool(tool, arguments)
    assert result.is_error, result.structured_content
    return text(result)


def text(result: CallToolResult) -> str:
    return " ".join(getattr(block, "text", "") for block in result.content)


def schema_keys(schema: Any) -> Iterator[str]:
    """Every key of a JSON Schema, at any depth."""
    if isinstance(schema, dict):
        for key, value in schema.items():
            yield key
            yield from schema_keys(value)
    elif isinstance(schema, list):
        for item in schema:
            yield from schema_keys(item)


def files_holding(root: Path, needle: bytes) -> tuple[list[Path], list[Path]]:
    files = [path for path in root.rglob("*") if path.is_file()]
    return files, [path for path in files if needle in path.read_bytes()]


def program(name: str, *tools: str, **fields: Any) -> dict[str, Any]:
    steps = [{"id": f"s{i}", "type": "tool", "tool": tool} for i, tool in enumerate(tools)]
    return {"name": name, "steps": steps, **fields}


async def test_lists_the_fifteen_tools_with_output_schemas_and_hints(service: Any) -> None:
    async with connect(service) as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
    assert set(tools) == set(TOOL_SCOPES)
    for name, tool in tools.items():
        assert tool.output_schema is not None and tool.output_schema["type"] == "object", name
        assert tool.annotations is not None
        assert tool.annotations.read_only_hint is (name in READ_ONLY), name
    for name in ("erase_subject", "delete_program"):
        assert tools[name].annotations.destructive_hint is True  # type: ignore[union-attr]
    assert "steps" in json.dumps(tools["run_program"].input_schema)  # the DSL's own schema


async def test_output_schemas_are_flat_and_still_refuse_what_they_refused(service: Any) -> None:
    async with connect(service) as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
        trace = await ok(client, "run_program", program=PAYMENT, context=ORDER)
    for name, tool in tools.items():
        keys = set(schema_keys(tool.output_schema))
        assert not keys & {"$ref", "$defs"}, name
        assert "anyOf" not in keys, name  # optional fields: "type": [T, "null"]
    flat = tools["run_program"].output_schema
    assert flat is not None
    step = trace["steps"][0]
    accepted = {  # what the schema must still say of each document
        "the result itself": (trace, True),
        "an unknown status": ({**trace, "status": "NOT_A_STATUS"}, False),
        "no error (nullable)": ({**trace, "error": None}, True),
        "a number as error": ({**trace, "error": 3}, False),
        "not finished (nullable time)": ({**trace, "finished_at": None}, True),
        "a number as finish time": ({**trace, "finished_at": 5}, False),
        "no program name": ({**trace, "program_name": None}, False),
        "no root hash": ({k: v for k, v in trace.items() if k != "root_hash"}, False),
        "an unknown step type": ({**trace, "steps": [{**step, "type": "nope"}]}, False),
        "a step with an error": ({**trace, "steps": [{**step, "error": "x"}]}, True),
        "attempts as text": ({**trace, "steps": [{**step, "attempts": "one"}]}, False),
        "cost as null": ({**trace, "metrics": {**trace["metrics"], "cost_usd": None}}, False),
    }
    validator = jsonschema.Draft202012Validator(flat)
    verdicts = {what: validator.is_valid(document) for what, (document, _) in accepted.items()}
    assert verdicts == {what: expected for what, (_, expected) in accepted.items()}


async def test_payment_flow_suspends_resumes_and_is_provable(service: Any) -> None:
    async with connect(service) as client:
        run = await ok(client, "run_program", program=PAYMENT, context=ORDER)
        assert (run["status"], run["cursor"]) == ("SUSPENDED", "capture")
        done = await ok(client, "resume_run", trace_id=run["trace_id"], event=PAID)
        assert done["status"] == "SUCCESS"

        trace = await ok(client, "get_trace", trace_id=run["trace_id"])
        assert [s["step_id"] for s in trace["steps"]] == [
            "reserve",
            "amount_guard",
            "initiate",
            "initiate",
            "capture",
            "receipt",
        ]
        assert trace["steps"][3] == {**trace["steps"][3], "status": "RESUMED", "output": PAID}

        page = await ok(client, "query_envelopes", execution_id=run["trace_id"])
        kinds = [e["kind"] for e in page["envelopes"]]
        assert kinds[0] == "run_started" and "run_finished" in kinds and "access" in kinds
        access = [e for e in page["envelopes"] if e["kind"] == "access"]
        assert set(access[0]["payload"]) == {"principal", "tool", "outcome", "duration_ms"}

        bundle = await ok(client, "get_proof", seq=page["envelopes"][0]["seq"])
        verify_proof_bundle(bundle, service.verifier_keys)  # raises if it does not hold
        report = await ok(client, "verify_ledger")
        assert report["ok"] and report["entries_checked"] > len(kinds)


@pytest.mark.parametrize("mode", ["auto", "legacy"])  # direct dispatch, and JSON-RPC streams
async def test_progress_notifications_report_each_step(service: Any, mode: str) -> None:
    seen: list[tuple[float, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, message))

    server = build_server(service, lambda _ctx: Principal.local_operator())
    async with Client(server, mode=mode) as client:
        result = await client.call_tool(
            "run_program", {"program": PAYMENT, "context": ORDER}, progress_callback=on_progress
        )
    assert not result.is_error
    assert seen == [
        (1, "step 'reserve' SUCCESS"),
        (2, "step 'amount_guard' SUCCESS"),
        (3, "step 'initiate' SUSPENDED"),
    ]


async def test_saving_versions_and_running_by_name(service: Any) -> None:
    first, second = program("pay", "send_receipt"), program("pay", "send_receipt", "send_receipt")
    context = {"order_id": "A-7"}
    async with connect(service) as client:
        v1 = await ok(client, "save_program", program=first)
        again = await ok(client, "save_program", program=first)
        v2 = await ok(client, "save_program", program=second)
        assert (v1["version"], again["version"], v2["version"]) == (1, 1, 2)
        assert again["hash"] == v1["hash"] != v2["hash"]

        listed = await ok(client, "list_programs")
        assert [(p["name"], p["version"]) for p in listed["programs"]] == [("pay", 2)]
        old = await ok(client, "get_program", name="pay", version=1)
        assert old["program"] == first

        run = await ok(client, "run_program", program="pay", context=context)
        assert (run["status"], run["program_hash"]) == ("SUCCESS", v2["hash"])
        saved_too = await ok(
            client, "run_program", program=program("other", "send_receipt"), save_as="copy"
        )
        assert (await ok(client, "get_program", name="copy"))["hash"] == saved_too["program_hash"]


async def test_delete_program_retires_it_and_keeps_history(service: Any) -> None:
    async with connect(service) as client:
        await ok(client, "save_program", program=program("pay", "send_receipt"))
        run = await ok(client, "run_program", program="pay", context={"order_id": "A-7"})
        retired = await ok(client, "delete_program", name="pay")
        assert retired["retired"] is True
        assert "deleted" in await refused(client, "run_program", program="pay")
        assert (await ok(client, "get_program", name="pay"))["retired"] is True
        assert (await ok(client, "get_trace", trace_id=run["trace_id"]))["status"] == "SUCCESS"
        assert "no saved program 'nope'" in await refused(client, "delete_program", name="nope")


async def test_a_tool_the_policy_denies_is_refused_and_recorded(service: Any) -> None:
    await service.workspace.ledger.set_policy(
        PolicySnapshot(name="no-charges", tools_deny=["initiate_payment"])
    )
    async with connect(service) as client:
        message = await refused(client, "run_program", program=PAYMENT, context=ORDER)
        assert "no-charges" in message and "'initiate_payment'" in message
        denied = (await ok(client, "query_envelopes", kind="denied"))["envelopes"]
        assert len(denied) == 1 and "initiate_payment" in denied[0]["payload"]["reason"]
        assert (await ok(client, "list_traces"))["traces"] == []
        check = await ok(client, "validate_program", program=PAYMENT)
        assert not check["valid"] and "policy:" in check["errors"][0]


async def test_policy_budget_cap_is_a_default_and_a_limit(service: Any) -> None:
    await service.workspace.ledger.set_policy(PolicySnapshot(max_steps=10))
    async with connect(service) as client:
        assert "max_steps 20 is above the cap 10" in await refused(
            client, "run_program", program=PAYMENT, context=ORDER
        )
        saved = await ok(client, "save_program", program=program("pay", "send_receipt"))
        body = (await ok(client, "get_program", name="pay"))["program"]
        assert body["max_steps"] == 10
        run = await ok(client, "run_program", program="pay", context={"order_id": "A-7"})
        assert run["program_hash"] == saved["hash"]


async def test_a_principal_without_the_scope_is_told_which_it_needs(service: Any) -> None:
    reader = Principal("dashboard", frozenset({Scope.READ}))
    async with connect(service, reader) as client:
        message = await refused(client, "run_program", program=PAYMENT, context=ORDER)
        assert "'dashboard'" in message and "'run' scope" in message
        assert "'audit' scope" in await refused(client, "verify_ledger")
        await ok(client, "list_traces")
    async with connect(service) as client:
        access = (await ok(client, "query_envelopes", kind="access"))["envelopes"]
    outcomes = [(e["payload"]["tool"], e["status"]) for e in access[:3]]
    assert outcomes == [
        ("run_program", "denied"),
        ("verify_ledger", "denied"),
        ("list_traces", "ok"),
    ]


async def test_domain_errors_are_tool_errors_a_model_can_act_on(service: Any) -> None:
    async with connect(service) as client:
        assert "list_traces" in await refused(client, "get_trace", trace_id="no-such-run")
        bad = {"name": "x", "steps": [{"id": "a", "type": "tool", "tool": "t", "prompt": "p"}]}
        assert "field 'prompt'" in await refused(client, "run_program", program=bad)
        assert "JSON object" in await refused(client, "run_program", program=5)
        assert "not a name" in await refused(client, "save_program", program="payment_flow")
        unknown = program("x", "no_such_tool")
        assert "'no_such_tool' is not registered" in await refused(
            client, "run_program", program=unknown
        )
        run = await ok(client, "run_program", program=PAYMENT, context=ORDER)
        await ok(client, "resume_run", trace_id=run["trace_id"], event=PAID, event_id="evt-1")
        again = await refused(
            client, "resume_run", trace_id=run["trace_id"], event=PAID, event_id="evt-1"
        )
        assert "already delivered" in again
        assert "not suspended" in await refused(client, "resume_run", trace_id=run["trace_id"])
        assert "cursor" in await refused(client, "list_traces", cursor="garbage")
        assert '"subject" (data subject id) is missing' in await refused(
            client, "run_program", program=PAYMENT, context={"order_id": {"$secret": 1}}
        )
        huge = {
            "name": "huge",
            "steps": [{"id": f"s{i}", "type": "tool", "tool": "t"} for i in range(100_000)],
        }
        assert "100000 steps; this server accepts at most 10000" in await refused(
            client, "run_program", program=huge
        )
        assert (await ok(client, "list_programs")) is not None  # still serving


async def test_a_context_secret_never_reaches_results_or_files(
    service: Any, tmp_path: Path
) -> None:
    context = {"order_id": {"$secret": SECRET, "subject": "cust-7"}, "amount": 250}
    seen: list[str] = []
    async with connect(service) as client:

        async def record(tool: str, **arguments: Any) -> dict[str, Any]:
            result = await client.call_tool(tool, arguments)
            seen.append(text(result) + json.dumps(result.structured_content))
            return result.structured_content or {}

        run = await record("run_program", program=PAYMENT, context=context)
        assert run["context"]["order_id"]["$ref"].startswith("vault://secret/")
        await record("resume_run", trace_id=run["trace_id"], event=PAID)
        await record("get_trace", trace_id=run["trace_id"])
        await record("list_traces")
        envelopes = await record("query_envelopes", limit=500)
        for envelope in envelopes["envelopes"]:
            await record("get_proof", seq=envelope["seq"])
        resource = await client.read_resource(f"trace://{run['trace_id']}")
        seen.append(json.dumps(resource.model_dump(mode="json")))
    assert not any(SECRET in item for item in seen)
    await service.workspace.ledger.checkpoint()
    files, holding = files_holding(tmp_path, SECRET.encode())
    assert len(files) >= 4 and holding == []  # the ledger, its WAL, the key store, the KEK...


async def test_a_refused_context_stores_no_secret(service: Any) -> None:
    # `reserve` is a step id: the run would refuse this context, so nothing may be sealed first.
    context = {"reserve": {"$secret": SECRET, "subject": "cust-9"}, "amount": 250}
    async with connect(service) as client:
        assert "also a step id" in await refused(
            client, "run_program", program=PAYMENT, context=context
        )
    assert service.workspace.vault.refs_of("cust-9") == []


async def test_erase_subject_tombstones_the_trace_and_the_ledger_still_verifies(
    service: Any,
) -> None:
    context = {"order_id": {"$secret": SECRET, "subject": "cust-7"}, "amount": 250}
    async with connect(service) as client:
        run = await ok(client, "run_program", program=PAYMENT, context=context)
        erased = await ok(client, "erase_subject", subject="cust-7", reason="GDPR art. 17")
        assert len(erased["refs_erased"]) == 1 and "cust-7" not in json.dumps(erased)
        trace = await ok(client, "get_trace", trace_id=run["trace_id"])
        assert trace["context"]["order_id"] == TOMBSTONE
        assert (await ok(client, "verify_ledger"))["ok"] is True


async def test_list_traces_pages_newest_first(service: Any) -> None:
    async with connect(service) as client:
        ids = []
        for order in ("A-1", "A-2", "A-3"):
            run = await ok(
                client, "run_program", program=PAYMENT, context={**ORDER, "order_id": order}
            )
            ids.append(run["trace_id"])
        first = await ok(client, "list_traces", limit=2, status="SUSPENDED")
        rest = await ok(client, "list_traces", limit=2, cursor=first["next_cursor"])
        assert rest["next_cursor"] is None
        listed = [t["trace_id"] for t in first["traces"] + rest["traces"]]
        assert listed == ids[::-1]
        assert (await ok(client, "list_traces", program="nope"))["traces"] == []


async def test_cancel_run_and_idempotent_runs(service: Any) -> None:
    async with connect(service) as client:
        run = await ok(client, "run_program", program=PAYMENT, context=ORDER, idempotency_key="k")
        same = await ok(client, "run_program", program=PAYMENT, context=ORDER, idempotency_key="k")
        assert same["trace_id"] == run["trace_id"]
        other = {**ORDER, "amount": 1}
        assert "idempotency key" in await refused(
            client, "run_program", program=PAYMENT, context=other, idempotency_key="k"
        )
        cancelled = await ok(client, "cancel_run", trace_id=run["trace_id"], reason="customer")
        assert cancelled["status"] == "CANCELLED"
        assert "cannot cancel" in await refused(client, "cancel_run", trace_id=run["trace_id"])


async def test_resources_and_the_write_program_prompt(service: Any) -> None:
    async with connect(service) as client:
        await ok(client, "save_program", program=PAYMENT)
        run = await ok(client, "run_program", program="payment_flow", context=ORDER)
        body = await client.read_resource("program://payment_flow")
        assert json.loads(body.contents[0].text)["name"] == "payment_flow"  # type: ignore[union-attr]
        trace = await client.read_resource(f"trace://{run['trace_id']}")
        assert json.loads(trace.contents[0].text)["status"] == "SUSPENDED"  # type: ignore[union-attr]
        prompt = await client.get_prompt("write_program", {"task": "refund small orders"})
    guide = prompt.messages[0].content.text  # type: ignore[union-attr]
    for needle in ("branch target", "next_step", "contains", "${", "reserve_funds", "refund small"):
        assert needle in guide


# -- the Mcp-Param header check sees every declaration, and only walks schemas that have one ---


async def test_header_check_keeps_every_declared_header_and_skips_schemas_without_one(
    service: LedgerflowService,
) -> None:
    server = build_server(service, lambda _ctx: Principal.local_operator())

    @server.tool()
    def routed(region: Annotated[str, Field(json_schema_extra={"x-mcp-header": "Region"})]) -> str:
        return region

    gateway: Any = server
    routed_schema = gateway._tool_input_schema("routed")
    assert routed_schema == server._tool_manager.get_tool("routed").parameters
    mismatch = validate_mcp_param_headers(
        routed_schema, {"region": "eu"}, {"mcp-param-region": "us"}
    )
    assert mismatch is not None and "Region" in mismatch.message
    assert (
        validate_mcp_param_headers(routed_schema, {"region": "eu"}, {"mcp-param-region": "eu"})
        is None
    )

    # run_program declares no header: what the check is given finds none, as the full schema would
    program_schema = gateway._tool_input_schema("run_program")
    full = server._tool_manager.get_tool("run_program").parameters
    assert program_schema is not full and len(json.dumps(program_schema)) < 100
    headers = {"mcp-param-program": "x", "mcp-param-name": "y"}
    for schema in (program_schema, full):
        assert validate_mcp_param_headers(schema, {"program": PAYMENT}, headers) is None
    assert gateway._tool_input_schema("no_such_tool") is None
