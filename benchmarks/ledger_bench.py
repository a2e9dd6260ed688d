"""Governance ledger throughput, with anchors measured in the same run on the same disk.

    python benchmarks/ledger_bench.py [--quick] [--dir DIR]

Measures, for synchronous=FULL and NORMAL (WAL mode):
  appends/s, 1 writer       sequential `await ledger.append(...)`: one commit (fsync) each
                            anchor: stdlib sqlite3, same table and indexes, INSERT + COMMIT per row
  appends/s, 100 writers    100 concurrent appenders sharing commits (group commit)
                            anchor: stdlib sqlite3, rows committed in batches of the mean group
                            size the ledger reached
  verify                    verify_ledger over the 100-writer file (recomputes every hash, the
                            Merkle roots of all checkpoints, their signatures)
                            anchor: stdlib sqlite3 reading every row + one SHA-256 per row
  open                      Ledger.open on that file (rebuilds the Merkle tree)
and, without SQLite:
  Merkle tree at 1,000,000 entries (100,000 with --quick): build from random entry hashes,
  inclusion proof creation and verification (anchor: as many SHA-256 of a 65-byte node as a
  proof has hashes, the floor of a proof check)
  proof bundle via the Ledger at the 100-writer size: create + verify with the public key only.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import random
import sqlite3
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from governance.checkpoint import Signer
from governance.ledger import Ledger
from governance.merkle import MerkleTree, leaf_hash, verify_inclusion
from governance.policy import PolicySnapshot
from governance.storage.ledger_port import Synchronous
from governance.verify import verify_ledger_at, verify_proof_bundle

ORIGIN = "bench.ledgerflow.example/log"
POLICY = PolicySnapshot(name="bench", tools_allow=["lookup", "refund"], max_cost_usd="5")
PAYLOAD_TEXT = "x" * 40


def payload(task: int, number: int) -> dict[str, Any]:
    return {"task": task, "n": number, "out": PAYLOAD_TEXT, "ok": True}


Row = tuple[str, float, str, float | None]
rows: list[Row] = []


def record(
    measure: str, value: float, unit: str, anchor: str = "", anchor_value: float = 0.0
) -> None:
    rows.append((f"{measure} ({unit})", value, anchor, anchor_value or None))


# -- anchors ---------------------------------------------------------------------------------

_ANCHOR_SCHEMA = (
    "CREATE TABLE envelopes (seq INTEGER PRIMARY KEY, execution_id TEXT NOT NULL, step_id TEXT,"
    " kind TEXT NOT NULL, status TEXT, policy_hash TEXT NOT NULL, canonical_snapshot_hash TEXT,"
    " payload TEXT NOT NULL, recorded_at INTEGER NOT NULL, prev_hash BLOB NOT NULL,"
    " entry_hash BLOB NOT NULL) STRICT",
    "CREATE INDEX by_execution ON envelopes (execution_id, seq)",
    "CREATE INDEX by_time ON envelopes (recorded_at)",
    "CREATE INDEX by_policy ON envelopes (policy_hash, seq)",
    "CREATE INDEX by_kind ON envelopes (kind, seq)",
)


def sqlite_inserts(path: Path, synchronous: str, count: int, per_commit: int) -> float:
    """Rows/s of plain sqlite3 inserting ledger-shaped rows, `per_commit` rows per COMMIT."""
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute(f"PRAGMA synchronous={synchronous}")
    for statement in _ANCHOR_SCHEMA:
        connection.execute(statement)
    policy_hash = POLICY.policy_hash
    body = '{"n":0,"ok":true,"out":"' + PAYLOAD_TEXT + '","task":0}'
    start = time.perf_counter()
    for first in range(0, count, per_commit):
        connection.execute("BEGIN IMMEDIATE")
        connection.executemany(
            "INSERT INTO envelopes VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            [
                (
                    seq,
                    "run-0",
                    "s",
                    "step",
                    "SUCCESS",
                    policy_hash,
                    None,
                    body,
                    seq,
                    b"\0" * 32,
                    hashlib.sha256(b"%d" % seq).digest(),
                )
                for seq in range(first, min(first + per_commit, count))
            ],
        )
        connection.execute("COMMIT")
    elapsed = time.perf_counter() - start
    connection.close()
    return count / elapsed


def sqlite_read_and_hash(path: Path) -> float:
    """Rows/s of plain sqlite3 reading every envelope row and hashing it once."""
    connection = sqlite3.connect(path)
    start = time.perf_counter()
    count = 0
    for row in connection.execute("SELECT * FROM envelopes ORDER BY seq"):
        hashlib.sha256(repr(row).encode()).digest()
        count += 1
    elapsed = time.perf_counter() - start
    connection.close()
    return count / elapsed


def sha256_node_us(repeat: int = 200_000) -> float:
    data = b"\x01" + bytes(64)
    sha256 = hashlib.sha256
    start = time.perf_counter()
    for _ in range(repeat):
        sha256(data).digest()
    return (time.perf_counter() - start) / repeat * 1e6


# -- the ledger ------------------------------------------------------------------------------


async def ledger_appends(
    path: Path, signer: Signer, synchronous: Synchronous, writers: int, count: int
) -> tuple[float, float]:
    """(appends/s, mean envelopes per commit) of `writers` concurrent appenders."""
    ledger = await Ledger.open_at(
        path, signer=signer, origin=ORIGIN, policy=POLICY, synchronous=synchronous
    )

    async def appender(task: int) -> None:
        for number in range(count // writers):
            await ledger.append(
                f"run-{task}",
                "step",
                step_id=f"s{number}",
                status="SUCCESS",
                payload=payload(task, number),
            )

    start = time.perf_counter()
    await asyncio.gather(*(appender(task) for task in range(writers)))
    elapsed = time.perf_counter() - start
    mean_batch = ledger.stats.mean_batch
    await ledger.close()
    return count // writers * writers / elapsed, mean_batch


async def verify_rate(path: Path, keys: list[str]) -> tuple[float, int]:
    start = time.perf_counter()
    report = await verify_ledger_at(path, keys)
    elapsed = time.perf_counter() - start
    assert report.ok, report
    return report.entries_checked / elapsed, report.checkpoints_checked


async def open_and_bundles(
    path: Path, signer: Signer, keys: list[str]
) -> tuple[float, float, float]:
    """(open seconds, µs per proof bundle, µs per bundle verification)."""
    start = time.perf_counter()
    ledger = await Ledger.open_at(path, signer=signer, origin=ORIGIN, checkpoint_on_close=False)
    opened = time.perf_counter() - start
    rng = random.Random(7)
    seqs = [rng.randrange(ledger.size) for _ in range(200)]
    start = time.perf_counter()
    bundles = [await ledger.proof_bundle(seq) for seq in seqs]
    make_us = (time.perf_counter() - start) / len(seqs) * 1e6
    await ledger.close()
    start = time.perf_counter()
    for bundle in bundles:
        verify_proof_bundle(bundle, keys)
    check_us = (time.perf_counter() - start) / len(bundles) * 1e6
    return opened, make_us, check_us


def merkle_at(size: int, proofs: int = 10_000) -> None:
    rng = random.Random(1)
    entry_hashes = [rng.randbytes(32) for _ in range(size)]
    start = time.perf_counter()
    tree = MerkleTree.from_leaf_hashes(leaf_hash(h) for h in entry_hashes)
    build = time.perf_counter() - start
    indexes = [rng.randrange(size) for _ in range(proofs)]
    start = time.perf_counter()
    made = [tree.inclusion_proof(index) for index in indexes]
    make_us = (time.perf_counter() - start) / proofs * 1e6
    root = tree.root()
    start = time.perf_counter()
    for index, proof in zip(indexes, made, strict=True):
        verify_inclusion(leaf_hash(entry_hashes[index]), index, size, proof, root)
    check_us = (time.perf_counter() - start) / proofs * 1e6
    # The floor of any proof check: one SHA-256 per proof hash, plus the leaf hash.
    hashes = sum(len(proof) for proof in made) / proofs + 1
    floor_us = sha256_node_us() * hashes
    floor = f"{hashes:.1f} x SHA-256 of a 65-byte node (µs)"
    label = f"merkle @ {size:,}"
    record(f"{label}: build from entry hashes", build, "s")
    record(f"{label}: inclusion proof", make_us, "µs", floor, floor_us)
    record(f"{label}: verify inclusion", check_us, "µs", floor, floor_us)


# -- main ------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, a few seconds")
    parser.add_argument("--dir", help="where to put the database files (default: a temp dir)")
    args = parser.parse_args()
    one_writer, many, merkle_size = (400, 5_000, 100_000) if args.quick else (4_000, 50_000, 10**6)
    signer = Signer.generate(ORIGIN)
    keys = [signer.verifier().to_text()]
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        directory = Path(tmp)
        modes: tuple[Synchronous, ...] = ("FULL", "NORMAL")
        for synchronous in modes:
            tag = synchronous.lower()
            anchor = sqlite_inserts(directory / f"anchor1-{tag}.db", synchronous, one_writer, 1)
            rate, _ = asyncio.run(
                ledger_appends(directory / f"one-{tag}.db", signer, synchronous, 1, one_writer)
            )
            record(
                f"appends, 1 writer, {synchronous}",
                rate,
                "/s",
                f"sqlite3 INSERT+COMMIT per row, {synchronous} (/s)",
                anchor,
            )
            path = directory / f"many-{tag}.db"
            rate, batch = asyncio.run(ledger_appends(path, signer, synchronous, 100, many))
            group = max(1, round(batch))
            anchor = sqlite_inserts(directory / f"anchorN-{tag}.db", synchronous, many, group)
            record(
                f"appends, 100 writers, {synchronous}",
                rate,
                "/s",
                f"sqlite3, {group} rows per COMMIT, {synchronous} (/s)",
                anchor,
            )
            record(f"  mean envelopes per commit, {synchronous}", batch, "envelopes")
        path = directory / "many-full.db"
        rate, checkpoints = asyncio.run(verify_rate(path, keys))
        record(
            f"verify_ledger, {many:,} envelopes, {checkpoints} checkpoints",
            rate,
            "/s",
            "sqlite3 read + 1 SHA-256 per row (/s)",
            sqlite_read_and_hash(path),
        )
        opened, make_us, check_us = asyncio.run(open_and_bundles(path, signer, keys))
        record(f"Ledger.open (tree rebuild), {many:,} envelopes", opened, "s")
        record(f"proof_bundle via the Ledger @ {many:,}", make_us, "µs")
        record(f"verify_proof_bundle @ {many:,} (bundle + public key)", check_us, "µs")
    merkle_at(merkle_size)
    print_table()


def print_table() -> None:
    def number(value: float) -> str:
        return f"{value:,.0f}" if value >= 100 else f"{value:,.2f}"

    header = ("measure", "value", "anchor", "anchor value", "ratio")
    lines: list[tuple[str, ...]] = [header]
    for measure, value, anchor, anchor_value in rows:
        ratio = f"{value / anchor_value:.2f}" if anchor_value else ""
        anchor_text = number(anchor_value) if anchor_value else ""
        lines.append((measure, number(value), anchor, anchor_text, ratio))
    widths = [max(len(line[column]) for line in lines) for column in range(len(header))]
    aligns: list[Callable[[str, int], str]] = [
        str.ljust,
        str.rjust,
        str.ljust,
        str.rjust,
        str.rjust,
    ]
    for position, line in enumerate(lines):
        cells = zip(line, widths, aligns, strict=True)
        print("  ".join(align(cell, width) for cell, width, align in cells))
        if position == 0:
            print("  ".join("-" * width for width in widths))
    print(f"\nos.cpu_count()={os.cpu_count()}; SQLite {sqlite3.sqlite_version}")


if __name__ == "__main__":
    main()
