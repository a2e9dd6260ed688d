"""The application service over a fresh workspace, for tests that call it in process."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from gateway.application.service import LedgerflowService
from gateway.application.workspace import Workspace


@asynccontextmanager
async def open_service(
    directory: Path, monkeypatch: pytest.MonkeyPatch, tools: Mapping[str, Any]
) -> AsyncIterator[LedgerflowService]:
    """A service with `tools` over a new ledger in `directory` (no KEK from the environment)."""
    monkeypatch.delenv("LEDGERFLOW_KEK", raising=False)
    workspace = await Workspace.open(directory / "ledger.db")
    service = await LedgerflowService.open(workspace, tools)
    try:
        yield service
    finally:
        await service.close()
        await workspace.close()
