"""The `ledgerflow` command line, run as a real subprocess from the repository root."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from kernel import Program, StepStatus, Trace, TraceStatus

REPO = Path(__file__).resolve().parents[2]
PAYMENT_FLOW = "examples/payment_flow.yaml"
REFUND = "examples/refund_guardrail.yaml"
TOOLS = "examples.payments:TOOLS"
ORDER = '{"order_id": "A-1001", "amount": 250}'
REFUND_CONTEXT = '{"order_id": "A-1001", "amount": 40, "user_input": "I was charged twice"}'

TOOL_MODULE = """
def explode(order_id):
    raise RuntimeError(f"provider down for {order_id}")

def noop():
    return {"ok": True}

TOOLS = {"explode": explode, "noop": noop}
"""


def ledgerflow(*args: str, pythonpath: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(pythonpath), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def write(path: Path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


def assert_usage_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in result.stderr


@pytest.fixture
def tool_dir(tmp_path: Path) -> Path:
    write(tmp_path / "ledgerflow_cli_test_tools.py", TOOL_MODULE)
    return tmp_path


# --- run --------------------------------------------------------------------------------------


def test_run_payment_flow_suspends_and_names_the_waiting_step() -> None:
    result = ledgerflow("run", PAYMENT_FLOW, "--tools", TOOLS, "--context", ORDER)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "SUSPENDED" in out
    assert "step 'initiate' waits for an external event" in out
    assert "step 'capture' runs next" in out
    assert "vm.resume(" in out
    assert "root hash" in out


def test_run_json_is_a_trace() -> None:
    result = ledgerflow("run", PAYMENT_FLOW, "--tools", TOOLS, "--context", ORDER, "--json")
    assert result.returncode == 0, result.stderr
    json.loads(result.stdout)
    trace = Trace.model_validate_json(result.stdout)
    assert trace.status is TraceStatus.SUSPENDED
    assert trace.suspended_step == "initiate"
    assert trace.cursor == "capture"
    assert [s.step_id for s in trace.steps] == ["reserve", "amount_guard", "initiate"]
    assert trace.steps[0].output["reservation_id"].startswith("res-")


def test_run_large_amount_goes_to_review() -> None:
    context = '{"order_id": "A-1002", "amount": 5000}'
    result = ledgerflow("run", PAYMENT_FLOW, "--tools", TOOLS, "--context", context, "--json")
    assert result.returncode == 0, result.stderr
    trace = Trace.model_validate_json(result.stdout)
    assert trace.status is TraceStatus.SUCCESS
    assert [s.step_id for s in trace.steps] == ["reserve", "amount_guard", "review"]


def test_json_example_is_the_yaml_example() -> None:
    yaml_program = Program.from_file(REPO / PAYMENT_FLOW)
    assert Program.from_file(REPO / "examples/payment_flow.json").hash == yaml_program.hash


@pytest.mark.parametrize(
    ("reply", "branch", "decision"),
    [("yes", "process_refund", True), ("no", "reject", False)],
)
def test_refund_guardrail_takes_the_branch_of_the_reply(
    reply: str, branch: str, decision: bool
) -> None:
    result = ledgerflow(
        "run", REFUND, "--tools", TOOLS, "--llm-mock", reply, "--context", REFUND_CONTEXT, "--json"
    )
    assert result.returncode == 0, result.stderr
    trace = Trace.model_validate_json(result.stdout)
    assert trace.status is TraceStatus.SUCCESS
    assert [s.step_id for s in trace.steps] == ["analyze", "guardrail", branch]
    assert trace.step("guardrail").output is decision
    assert trace.metrics.llm_calls == 1


def test_context_from_a_file(tmp_path: Path) -> None:
    context = write(tmp_path / "request.json", REFUND_CONTEXT)
    result = ledgerflow(
        "run", REFUND, "--tools", TOOLS, "--llm-mock", "no", "--context", "@" + context
    )
    assert result.returncode == 0, result.stderr
    assert "reject" in result.stdout
    assert "SUCCESS" in result.stdout


def test_a_tool_that_raises_fails_the_run(tmp_path: Path, tool_dir: Path) -> None:
    program = write(
        tmp_path / "explode.yaml",
        "name: explode\nsteps:\n"
        "  - {id: charge, type: tool, tool: explode, args: {order_id: $order_id}}\n",
    )
    result = ledgerflow(
        "run",
        program,
        "--tools",
        "ledgerflow_cli_test_tools:TOOLS",
        "--context",
        '{"order_id": "Z-9"}',
        pythonpath=tool_dir,
    )
    assert result.returncode == 1, result.stderr
    assert "FAILED" in result.stdout
    assert "RuntimeError: provider down for Z-9" in result.stdout


def test_llm_step_without_a_model_is_a_usage_error() -> None:
    result = ledgerflow("run", REFUND, "--tools", TOOLS, "--context", REFUND_CONTEXT)
    assert_usage_error(
        result, "step 'analyze'", "LLM adapter", "hint: answer llm steps with --llm-mock"
    )


@pytest.mark.parametrize(
    ("context", "message"),
    [
        ('{"order_id": ', "--context is not valid JSON: Expecting value: line 1 column 14"),
        ('["A-1001"]', "--context must be a JSON object, got an array"),
        ('{"amount": NaN}', "NaN is not a JSON value"),
        ('{"reserve": 1}', "context key 'reserve' is also a step id"),
        ("@no/such/context.json", "cannot read context file no/such/context.json"),
    ],
)
def test_bad_context_is_a_usage_error(context: str, message: str) -> None:
    result = ledgerflow("run", PAYMENT_FLOW, "--tools", TOOLS, "--context", context)
    assert_usage_error(result, message)


def test_missing_program_file_is_a_usage_error() -> None:
    result = ledgerflow("run", "no/such/program.yaml")
    assert_usage_error(result, "cannot read program file no/such/program.yaml")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no_such_module_xyz:TOOLS", "cannot import module 'no_such_module_xyz'"),
        ("examples.payments:TOOL", "module 'examples.payments' has no attribute 'TOOL'"),
        ("examples.payments", "must be module:attribute"),
        ("examples.payments:PENDING", "expected a dict of tools (name -> callable) or a callable"),
    ],
)
def test_bad_tools_are_usage_errors(spec: str, message: str) -> None:
    result = ledgerflow("run", PAYMENT_FLOW, "--tools", spec, "--context", ORDER)
    assert_usage_error(result, message)
    assert result.stderr.count("\n") == 1  # one line


def test_a_single_callable_registers_under_its_name(tmp_path: Path, tool_dir: Path) -> None:
    program = write(
        tmp_path / "one.json",
        json.dumps({"name": "one", "steps": [{"id": "only", "type": "tool", "tool": "noop"}]}),
    )
    result = ledgerflow(
        "run", program, "--tools", "ledgerflow_cli_test_tools:noop", "--json", pythonpath=tool_dir
    )
    assert result.returncode == 0, result.stderr
    trace = Trace.model_validate_json(result.stdout)
    assert trace.steps[0].status is StepStatus.SUCCESS
    assert trace.final_output == {"ok": True}


def test_typo_in_a_field_names_step_and_field(tmp_path: Path) -> None:
    program = write(
        tmp_path / "typo.yaml",
        "name: typo\nsteps:\n  - {id: reserve, type: tool, tol: reserve_funds}\n",
    )
    result = ledgerflow("run", program, "--tools", TOOLS)
    assert_usage_error(result, "step 'reserve'", "unknown field 'tol'", "did you mean 'tool'")


# --- validate ---------------------------------------------------------------------------------


def test_validate_good_program() -> None:
    result = ledgerflow("validate", PAYMENT_FLOW, "--tools", TOOLS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "payment_flow: valid, 0 errors, 0 warnings"


def test_validate_refund_example_with_llm() -> None:
    result = ledgerflow("validate", REFUND, "--tools", TOOLS, "--llm")
    assert result.returncode == 0, result.stdout + result.stderr


def test_validate_unknown_tool() -> None:
    result = ledgerflow("validate", PAYMENT_FLOW, "--tools", "examples.payments:send_receipt")
    assert result.returncode == 1
    assert "error: step 'reserve', field 'tool': tool 'reserve_funds' is not registered" in (
        result.stdout
    )
    assert "payment_flow: invalid, 4 errors, 0 warnings" in result.stdout


def test_validate_cycle_without_max_steps(tmp_path: Path) -> None:
    program = write(
        tmp_path / "loop.yaml",
        "name: loop\nsteps:\n"
        "  - {id: poll, type: tool, tool: noop, next_step: check}\n"
        "  - {id: check, type: tool, tool: noop, next_step: poll}\n",
    )
    result = ledgerflow("validate", program)
    assert result.returncode == 1
    assert "error: step 'poll', field 'next_step': steps poll -> check -> poll form a cycle" in (
        result.stdout
    )


def test_validate_warnings_alone_pass(tmp_path: Path) -> None:
    program = write(
        tmp_path / "orphan.yaml",
        "name: orphan\nsteps:\n"
        "  - {id: start, type: tool, tool: noop, is_terminal: true}\n"
        "  - {id: orphan, type: tool, tool: noop}\n",
    )
    result = ledgerflow("validate", program)
    assert result.returncode == 0, result.stdout
    assert "warning: step 'orphan': unreachable: no path leads here" in result.stdout
    assert "orphan: valid, 0 errors, 1 warning" in result.stdout


def test_validate_program_that_does_not_load(tmp_path: Path) -> None:
    program = write(tmp_path / "broken.json", '{"name": "broken", "steps": [{"id": "a"}]}')
    result = ledgerflow("validate", program)
    assert result.returncode == 1
    assert "error: step 'a', field 'type'" in result.stdout
    assert "(not loaded)" in result.stdout


# --- the rest ---------------------------------------------------------------------------------


def test_version() -> None:
    result = ledgerflow("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"ledgerflow {metadata.version('ledgerflow')}"


def test_no_command_prints_help_and_fails() -> None:
    result = ledgerflow()
    assert result.returncode == 2
    assert "run" in result.stderr and "validate" in result.stderr
