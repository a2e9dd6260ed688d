"""Witnesses: the ledger's checkpoints submitted to C2SP tlog-witness services, their
cosignatures kept.

A witness remembers the last checkpoint of each log it cosigned and cosigns a new one only
with a consistency proof from it: a log that forks or rolls back cannot get a cosignature
for its new history, so a checkpoint with N cosignatures is one N independent parties saw
extend everything before it. `submit` sends the ledger's latest checkpoint with the proof
from the size the witness last cosigned (a 409 tells it the witness's size: it retries once
from there), keeps each verified cosignature with the note it signs, and records a refusal
(422: the witness found the checkpoint inconsistent) as the witness's last error.

The tables live beside the ledger's, through a connection of their own: operational state
whose every cosignature can be checked again from the note it signs and the witness's key.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import httpx

from governance.cosignature import WitnessKey, cosignature_lines, verify_cosignature
from governance.errors import CheckpointError
from governance.storage.database import ConstraintError
from governance.storage.operational_tables import OperationalTables
from kernel.errors import LedgerflowError

SUBMIT_TIMEOUT_SECONDS = 10.0

_V1 = (
    """CREATE TABLE IF NOT EXISTS lf_witnesses (
        name TEXT PRIMARY KEY,
        url TEXT NOT NULL,
        vkey TEXT NOT NULL,
        cosigned_size INTEGER NOT NULL DEFAULT 0,
        last_error TEXT,
        updated_at REAL NOT NULL
    ) STRICT""",
    """CREATE TABLE IF NOT EXISTS lf_cosignatures (
        witness TEXT NOT NULL,
        tree_size INTEGER NOT NULL,
        note TEXT NOT NULL,
        line TEXT NOT NULL,
        cosigned_at INTEGER NOT NULL,
        PRIMARY KEY (witness, tree_size)
    ) STRICT""",
)


class WitnessError(LedgerflowError, ValueError):
    """A witness cannot be added as asked (bad URL or key, name taken)."""


@dataclass(frozen=True, slots=True)
class Witness:
    name: str
    url: str
    key: WitnessKey
    cosigned_size: int
    last_error: str | None


@dataclass(frozen=True, slots=True)
class Cosigned:
    witness: str
    tree_size: int
    note: bytes
    line: str
    cosigned_at: int


class WitnessStore(OperationalTables):
    MIGRATIONS = ((1, _V1),)
    VERSION_TABLE = "lf_witnesses_schema"
    TABLES = ("lf_witnesses", "lf_cosignatures")
    WHAT = "witness tables"

    async def add(self, url: str, vkey: str) -> Witness:
        key = WitnessKey.from_text(vkey)
        if not url.startswith(("http://", "https://")):
            raise WitnessError(f"witness url {url!r} must start with http:// or https://")
        try:
            await self.db.execute(
                "INSERT INTO lf_witnesses (name, url, vkey, updated_at) VALUES (?, ?, ?, ?)",
                (key.name, url.rstrip("/"), key.to_text(), time.time()),
            )
        except ConstraintError:
            raise WitnessError(f"a witness named {key.name!r} is configured already") from None
        return Witness(key.name, url.rstrip("/"), key, 0, None)

    async def all(self) -> list[Witness]:
        rows = await self.db.fetch(
            "SELECT name, url, vkey, cosigned_size, last_error FROM lf_witnesses ORDER BY name"
        )
        return [Witness(r[0], r[1], WitnessKey.from_text(r[2]), r[3], r[4]) for r in rows]

    async def cosignatures(self) -> list[Cosigned]:
        rows = await self.db.fetch(
            "SELECT witness, tree_size, note, line, cosigned_at FROM lf_cosignatures "
            "ORDER BY tree_size, witness"
        )
        return [Cosigned(r[0], r[1], r[2].encode(), r[3], r[4]) for r in rows]

    async def record_cosignature(
        self, witness: Witness, size: int, note: bytes, line: str, at: int
    ) -> None:
        await self.db.execute(
            "INSERT INTO lf_cosignatures (witness, tree_size, note, line, cosigned_at) "
            "SELECT ?, ?, ?, ?, ? WHERE NOT EXISTS (SELECT 1 FROM lf_cosignatures "
            "WHERE witness = ? AND tree_size = ?)",
            (witness.name, size, note.decode(), line, at, witness.name, size),
        )
        await self.record_state(witness, size, None)

    async def record_state(self, witness: Witness, size: int, error: str | None) -> None:
        await self.db.execute(
            "UPDATE lf_witnesses SET cosigned_size = ?, last_error = ?, updated_at = ? "
            "WHERE name = ?",
            (size, error, time.time(), witness.name),
        )


@dataclass(frozen=True, slots=True)
class Submission:
    witness: str
    tree_size: int
    outcome: str  # "cosigned", "unchanged", "refused", "failed"
    detail: str | None = None


async def submit(store: WitnessStore, witness: Witness, ledger: Any) -> Submission:
    """Send the ledger's latest checkpoint to `witness` (see the module docstring)."""
    old = witness.cosigned_size
    async with httpx.AsyncClient(timeout=SUBMIT_TIMEOUT_SECONDS) as http:
        for _attempt in range(2):
            bundle = await ledger.consistency_bundle(max(old, 1))  # cuts a checkpoint if due
            size, note = bundle["new_size"], bundle["checkpoint"].encode()
            if size == old:
                return Submission(witness.name, size, "unchanged")
            proof = bundle["consistency_proof"] if old > 0 else []
            lines = "".join(f"{h}\n" for h in proof or [])
            try:
                answer = await http.post(
                    f"{witness.url}/add-checkpoint", content=f"old {old}\n{lines}\n".encode() + note
                )
            except httpx.HTTPError as exc:
                return await _failed(store, witness, size, "failed", f"unreachable: {exc}")
            known = _size_of(answer.text, old)
            if answer.status_code == 409 and known != old and _attempt == 0:
                old = known  # the witness cosigned another size: prove from there
                continue
            if answer.status_code == 200:
                return await _keep(store, witness, size, note, answer.text)
            why = " ".join(answer.text.split())[:300]
            if answer.status_code in (400, 409, 422):
                detail = (
                    f"refused (HTTP {answer.status_code}): the checkpoint of size {size} does not "
                    f"extend the one of size {old} it cosigned: {why}"
                )
                return await _failed(store, witness, size, "refused", detail)
            return await _failed(
                store, witness, size, "failed", f"HTTP {answer.status_code}: {why}"
            )
    return await _failed(store, witness, old, "failed", "the witness's size kept changing")


def _size_of(text: str, default: int) -> int:
    first = text.strip().split("\n")[0]
    return int(first) if first.isdigit() else default


async def _keep(
    store: WitnessStore, witness: Witness, size: int, note: bytes, answer: str
) -> Submission:
    for line in cosignature_lines(answer):
        try:
            at = verify_cosignature(line, note, witness.key)
        except CheckpointError as exc:
            return await _failed(store, witness, size, "failed", str(exc))
        if at is not None:
            await store.record_cosignature(witness, size, note, line, at)
            return Submission(witness.name, size, "cosigned")
    return await _failed(
        store, witness, size, "failed", "the answer holds no cosignature of the witness's key"
    )


async def _failed(
    store: WitnessStore,
    witness: Witness,
    size: int,
    outcome: str,
    detail: str,
) -> Submission:
    await store.record_state(witness, witness.cosigned_size, detail)
    return Submission(witness.name, size, outcome, detail)


def cosigned_checkpoints(
    cosignatures: list[Cosigned], keys: list[WitnessKey], notes: dict[int, bytes]
) -> dict[int, set[str]]:
    """Tree size -> the witnesses whose cosignature of the ledger's own checkpoint note of
    that size (`notes`) verifies with the keys given."""
    by_name = {key.name: key for key in keys}
    found: dict[int, set[str]] = {}
    for cosigned in cosignatures:
        key = by_name.get(cosigned.witness)
        if key is None or notes.get(cosigned.tree_size) != cosigned.note:
            continue
        try:
            if verify_cosignature(cosigned.line, cosigned.note, key) is not None:
                found.setdefault(cosigned.tree_size, set()).add(key.name)
        except CheckpointError:
            continue
    return found
