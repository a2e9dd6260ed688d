"""`ledgerflow audit-ui`: the console over a local file on loopback, without tokens."""

from __future__ import annotations

import contextlib
import html
import subprocess
import time
from pathlib import Path

import httpx

from tests.gateway.test_cli_ledger import PAYMENT_FLOW, TOOLS, ledgerflow
from tests.processes import COMMAND, REPO, clean_env, free_port


def test_audit_ui_serves_the_console_on_loopback_and_records_each_view(tmp_path: Path) -> None:
    db = tmp_path / "ledger.db"
    context = '{"order_id": "A-1", "amount": 5}'
    ran = ledgerflow("run", PAYMENT_FLOW, "--tools", TOOLS, "--context", context, "--db", str(db))
    assert ran.returncode == 0, ran.stderr
    port = free_port()
    process = subprocess.Popen(
        [*COMMAND, "audit-ui", "--db", str(db), "--port", str(port)],
        cwd=REPO, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/audit/"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, "audit-ui exited"
            assert time.monotonic() < deadline, "audit-ui did not start"
            with contextlib.suppress(httpx.TransportError):
                page = httpx.get(url, timeout=2)
                break
            time.sleep(0.1)
        assert page.status_code == 200 and "payment_flow" in page.text
        assert "Sign out" not in page.text  # nobody to sign out: loopback, no token
        access = html.unescape(httpx.get(f"{url}envelopes?kind=access", timeout=10).text)
        assert '"principal": "local:' in access and "list_traces" in access
    finally:
        process.terminate()
        process.wait(20)
    refused = ledgerflow("audit-ui", "--db", str(db), "--host", "0.0.0.0")
    assert refused.returncode == 2 and "binds only a loopback address" in refused.stderr
