"""`serve --synchronous` and the settings' `synchronous`: the level the ledger commits at, as
/readyz reports it (HTTP) and the start-up line says (stdio); the flag wins over the file."""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx
import pytest

from gateway.application.workspace import Workspace
from tests.processes import COMMAND, REPO, clean_env, serving_http


def _readyz_level(tmp: Path, *args: str) -> str:
    with serving_http("--db", str(tmp / "ledger.db"), *args, log=tmp / "serve.log") as served:
        body = httpx.get(f"{served.url}/readyz", timeout=10).json()
    return str(body["synchronous"])


@pytest.mark.parametrize(
    ("settings", "flags", "level"),
    [
        ("", (), "FULL"),
        ('synchronous = "NORMAL"\n', (), "NORMAL"),
        ('synchronous = "NORMAL"\n', ("--synchronous", "full"), "FULL"),
        ("", ("--synchronous", "normal"), "NORMAL"),
    ],
)
def test_http_serves_at_the_level_asked_for(
    tmp_path: Path, settings: str, flags: tuple[str, ...], level: str
) -> None:
    config = tmp_path / "ledgerflow.toml"
    config.write_text(settings)
    assert _readyz_level(tmp_path, "--config", str(config), *flags) == level


def test_stdio_serves_at_the_level_of_its_flag(tmp_path: Path) -> None:
    command = [*COMMAND, "serve", "--transport", "stdio", "--db", str(tmp_path / "ledger.db")]
    process = subprocess.Popen(
        [*command, "--synchronous", "normal"],
        cwd=REPO,
        env=clean_env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    line = process.stderr.readline()
    while line and "serving" not in line:
        line = process.stderr.readline()
    _, rest = process.communicate("", timeout=30)  # stdin closed: the server ends
    assert "(synchronous=NORMAL)" in line, line + rest


def test_a_bad_level_is_refused_naming_the_choices(tmp_path: Path) -> None:
    done = subprocess.run(
        [*COMMAND, "serve", "--db", str(tmp_path / "l.db"), "--synchronous", "off"],
        cwd=REPO,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "invalid choice: 'off'" in done.stderr and "'normal'" in done.stderr


async def test_a_workspace_reports_the_level_its_ledger_commits_at(tmp_path: Path) -> None:
    async with await Workspace.open(tmp_path / "l.db", synchronous="NORMAL") as workspace:
        assert workspace.synchronous == "NORMAL"
        writer = workspace.ledger.store._write_connection()  # type: ignore[attr-defined]
        assert await writer.fetch("PRAGMA synchronous") == [(1,)]
