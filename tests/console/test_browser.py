"""The audit console driven in a real headless Chromium (Debian's chromium and chromedriver,
through Selenium), against `ledgerflow serve --transport http` on loopback: sign-in with and
without the audit scope, filters, a run, a proof bundle downloaded and checked offline, the
verify view on a sound and on a tampered ledger, a tombstone after erasure, sign-out."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from kernel.capability import TOMBSTONE
from tests.gateway.test_cli_ledger import PAYMENT_FLOW, SECRET_ORDER, TOOLS
from tests.processes import ledgerflow as run_ledgerflow
from tests.processes import serving_http

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="chromium and chromedriver are not installed (.ci/test-parts installs Debian's)",
)
SCREENSHOTS = os.environ.get("LEDGERFLOW_CONSOLE_SCREENSHOTS")  # a folder: save the pages


def ledgerflow(*args: str) -> str:
    """The command's output; it must succeed."""
    done = run_ledgerflow(*args)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@dataclass
class Served:
    url: str
    db: Path
    key: str
    tokens: dict[str, str]
    trace_id: str


@contextlib.contextmanager
def serve(db: Path) -> Iterator[str]:
    log = db.parent / "serve.log"
    with serving_http("--db", str(db), "--tools", TOOLS, log=log) as server:
        yield server.url


def make_ledger(directory: Path) -> tuple[Path, str, dict[str, str], str]:
    db = directory / "ledger.db"
    flags = ["--tools", TOOLS, "--context", SECRET_ORDER, "--db", str(db), "--json"]
    trace = json.loads(ledgerflow("run", PAYMENT_FLOW, *flags))
    tokens = {}
    for name, scopes in (("auditor", "audit,read"), ("reader", "read"), ("dpo", "admin")):
        tokens[name] = ledgerflow(
            "token", "create", "--name", name, "--scopes", scopes, "--db", str(db)
        ).strip()
    return db, ledgerflow("pubkey", "--db", str(db)).strip(), tokens, trace["trace_id"]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    db, key, tokens, trace_id = make_ledger(tmp_path_factory.mktemp("console"))
    with serve(db) as url:
        yield Served(url, db, key, tokens, trace_id)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    downloads = tmp_path_factory.mktemp("downloads")
    options = Options()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--window-size=1400,1000"):  # fmt: skip
        options.add_argument(argument)
    options.add_experimental_option(
        "prefs",
        {"download.default_directory": str(downloads), "download.prompt_for_download": False},
    )
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.execute_cdp_cmd(
        "Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)}
    )
    driver.downloads = downloads
    try:
        yield driver
    finally:
        driver.quit()


def click(browser: Any, element: Any) -> None:
    """Click something that loads a new page, and wait until it has."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    page = browser.find_element(By.TAG_NAME, "html")
    element.click()

    def left(_: Any) -> bool:
        try:
            page.tag_name  # noqa: B018 (touching it tells whether it is still there)
        except WebDriverException:  # stale, or (mid-navigation) not in the document
            return True
        return False

    wait = WebDriverWait(browser, 20)
    wait.until(left)
    wait.until(lambda driver: driver.execute_script("return document.readyState") == "complete")


def sign_in(browser: Any, url: str, token: str) -> None:
    from selenium.webdriver.common.by import By

    browser.get(f"{url}/audit/login")
    browser.find_element(By.ID, "token").send_keys(token)
    click(browser, browser.find_element(By.ID, "sign-in"))


def shot(browser: Any, name: str) -> None:
    if SCREENSHOTS:
        browser.save_screenshot(str(Path(SCREENSHOTS) / f"console-{name}.png"))


def test_without_the_audit_scope_the_console_stays_shut(served: Served, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    browser.delete_all_cookies()
    browser.get(f"{served.url}/audit/")
    assert browser.current_url.endswith("/audit/login")
    sign_in(browser, served.url, served.tokens["reader"])
    error = browser.find_element(By.ID, "error").text
    assert error == "token 'reader' lacks the 'audit' scope the console needs"
    assert browser.get_cookies() == []
    sign_in(browser, served.url, "lf_" + "x" * 43)
    assert "invalid token" in browser.find_element(By.ID, "error").text
    answer = httpx.get(f"{served.url}/audit/envelopes", follow_redirects=False)
    assert answer.status_code == 303  # no session: to the sign-in page, nothing shown


def test_an_auditor_filters_runs_opens_one_and_checks_a_proof_offline(
    served: Served, browser: Any, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    browser.delete_all_cookies()
    sign_in(browser, served.url, served.tokens["auditor"])
    cookie = next(c for c in browser.get_cookies() if c["name"] == "lf_audit_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert served.tokens["auditor"] not in json.dumps(browser.get_cookies())
    runs = browser.find_element(By.ID, "runs").text
    assert served.trace_id in runs
    shot(browser, "runs")

    Select(browser.find_element(By.NAME, "status")).select_by_value("SUCCESS")
    click(browser, browser.find_element(By.ID, "filter"))
    assert served.trace_id not in browser.find_element(By.ID, "runs").text
    Select(browser.find_element(By.NAME, "status")).select_by_value("SUSPENDED")
    click(browser, browser.find_element(By.ID, "filter"))
    click(browser, browser.find_element(By.LINK_TEXT, served.trace_id))
    assert browser.find_element(By.ID, "status").text == "SUSPENDED"
    steps = browser.find_element(By.ID, "steps").text
    assert "reserve" in steps and "seq 1" in steps
    checked = browser.find_element(By.ID, "checked").text
    assert checked.startswith("Verified: ") and "in the ledger signed up to seq" in checked
    assert "Jane-Q-Public" not in browser.page_source  # the secret shows as its ref
    shot(browser, "run")

    browser.get(f"{served.url}/audit/envelopes?kind=step")
    shot(browser, "envelopes")
    link = browser.find_elements(By.CSS_SELECTOR, "a.proof")[0]
    seq = link.get_attribute("href").rsplit("/", 1)[1]
    link.click()
    bundle = Path(browser.downloads) / f"proof-{seq}.json"
    deadline = time.monotonic() + 20
    while not bundle.exists():
        assert time.monotonic() < deadline, list(Path(browser.downloads).iterdir())
        time.sleep(0.1)
    checked = ledgerflow("verify-proof", str(bundle), "--key", served.key)
    assert checked.startswith(f"OK: envelope seq {seq} ")

    runs_export = httpx.get(
        f"{served.url}/audit/?status=SUSPENDED&format=jsonl",
        cookies={"lf_audit_session": cookie["value"]},
    )
    assert json.loads(runs_export.text.splitlines()[0])["trace_id"] == served.trace_id
    csv = httpx.get(
        f"{served.url}/audit/envelopes?kind=step&format=csv",
        cookies={"lf_audit_session": cookie["value"]},
    )
    assert csv.headers["content-type"].startswith("text/csv")
    assert csv.text.splitlines()[0].startswith("seq,kind,execution_id")
    assert "script-src" not in csv.headers["content-security-policy"]  # no script at all
    assert "default-src 'none'" in csv.headers["content-security-policy"]

    browser.get(f"{served.url}/audit/checkpoints")
    assert "the first" in browser.find_element(By.ID, "checkpoints").text
    browser.get(f"{served.url}/audit/verify")
    browser.find_element(By.ID, "keys").send_keys(served.key)
    click(browser, browser.find_element(By.ID, "verify"))
    assert browser.find_element(By.ID, "result").text.startswith("OK: ")
    shot(browser, "verify")

    browser.get(f"{served.url}/audit/envelopes?kind=access")
    access = browser.find_element(By.ID, "envelopes").text
    assert '"principal": "auditor"' in access and "list_traces" in access


async def _erase(served: Served) -> None:
    headers = {"Authorization": f"Bearer {served.tokens['dpo']}"}
    async with (
        create_mcp_http_client(headers=headers) as http,
        Client(streamable_http_client(f"{served.url}/mcp", http_client=http)) as client,
    ):
        erased = await client.call_tool(
            "erase_subject", {"subject": "cust-42", "reason": "GDPR art. 17 request"}
        )
        assert not erased.is_error


def test_after_an_erasure_the_console_shows_the_tombstone(served: Served, browser: Any) -> None:
    import asyncio

    from selenium.webdriver.common.by import By

    asyncio.run(_erase(served))
    browser.delete_all_cookies()
    sign_in(browser, served.url, served.tokens["auditor"])
    browser.get(f"{served.url}/audit/runs/{served.trace_id}")
    assert TOMBSTONE in browser.find_element(By.ID, "steps").text
    browser.get(f"{served.url}/audit/envelopes?kind=erase")
    assert "GDPR art. 17 request" in browser.find_element(By.ID, "envelopes").text
    click(browser, browser.find_element(By.CSS_SELECTOR, "header button"))  # sign out
    assert browser.current_url.endswith("/audit/login")
    browser.get(f"{served.url}/audit/")
    assert browser.current_url.endswith("/audit/login")


def test_a_tampered_ledger_is_reported_at_the_seq_that_was_changed(
    tmp_path: Path, browser: Any
) -> None:
    from selenium.webdriver.common.by import By

    db, key, tokens, _ = make_ledger(tmp_path)
    with contextlib.closing(sqlite3.connect(db, isolation_level=None)) as connection:
        for (name,) in connection.execute(
            "SELECT name FROM sqlite_master WHERE type = 'trigger'"
        ).fetchall():
            connection.execute(f"DROP TRIGGER {name}")
        connection.execute("UPDATE envelopes SET payload = ? WHERE seq = 2", ('{"forged": 1}',))
    with serve(db) as url:
        browser.delete_all_cookies()
        sign_in(browser, url, tokens["auditor"])
        browser.get(f"{url}/audit/verify")
        browser.find_element(By.ID, "keys").send_keys(key)
        click(browser, browser.find_element(By.ID, "verify"))
        result = browser.find_element(By.ID, "result").text
    assert result.startswith("FAILED at seq 2: ")
