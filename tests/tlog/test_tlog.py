"""The ledger served as a C2SP tlog-tiles log by `ledgerflow serve --transport http`, read over
real HTTP: tiles and entry bundles checked against the ledger's own tree, and the whole log
verified by Go's golang.org/x/mod/sumdb/note and sumdb/tlog (code ledgerflow did not write)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway.application.workspace import Workspace
from governance import EnvelopeKind
from governance.checkpoint import Verifier, open_checkpoint
from governance.merkle import MerkleTree, leaf_hash
from governance.tiles import read_entry_bundle
from tests.processes import ledgerflow, serving_http

GOPATH = Path("/usr/share/gocode")
VERIFIER_SOURCE = Path(__file__).parent / "verifier"


def append(db: Path, count: int) -> None:
    """`count` envelopes appended to the ledger at `db`."""

    async def work() -> None:
        async with await Workspace.open(db) as workspace:
            ledger = workspace.ledger
            await asyncio.gather(
                *(
                    ledger.append("tlog-test", EnvelopeKind.ACCESS, status="ok", payload={"n": n})
                    for n in range(count)
                )
            )

    asyncio.run(work())


class Log:
    def __init__(self, tmp: Path) -> None:
        self.db = tmp / "ledger.db"
        append(self.db, 300)
        old = tmp / "old.note"
        made = ledgerflow("checkpoint", "--out", str(old), "--db", str(self.db))
        assert made.returncode == 0, made.stderr
        self.old_note = old.read_bytes()
        append(self.db, 300)  # 600 or so: two full leaf tiles and a partial one
        self.key = ledgerflow("pubkey", "--db", str(self.db)).stdout.strip()
        self.url = ""

    @property
    def entries(self) -> list[bytes]:
        """Every entry hash, read from the file with plain sqlite3 (the server may append)."""
        with contextlib.closing(sqlite3.connect(f"file:{self.db}?mode=ro", uri=True)) as db:
            rows = db.execute("SELECT entry_hash FROM envelopes ORDER BY seq").fetchall()
        return [row[0] if isinstance(row[0], bytes) else bytes.fromhex(row[0]) for row in rows]

    @property
    def old(self) -> tuple[int, bytes]:
        checkpoint = open_checkpoint(self.old_note, [Verifier.from_text(self.key)]).checkpoint
        return checkpoint.size, checkpoint.root


@pytest.fixture(scope="module")
def log(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Log]:
    tmp = tmp_path_factory.mktemp("tlog")
    served = Log(tmp)
    # Loopback only, without tokens: /tlog/ is public anyway.
    env = {"LEDGERFLOW_AUTH_REQUIRED": "false"}
    with serving_http("--db", str(served.db), log=tmp / "serve.log", env=env) as server:
        served.url = f"{server.url}/tlog"
        yield served


def get(log: Log, path: str) -> httpx.Response:
    return httpx.get(f"{log.url}/{path}", timeout=10)


def test_the_checkpoint_is_the_signed_note_of_the_whole_log(log: Log) -> None:
    answer = get(log, "checkpoint")  # first: the server signs what it holds
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    signed = open_checkpoint(answer.content, [Verifier.from_text(log.key)]).checkpoint
    tree = MerkleTree.from_leaf_hashes(leaf_hash(entry) for entry in log.entries)
    assert signed.size == tree.size == len(log.entries)
    assert signed.root == tree.root()


def test_tiles_and_entry_bundles_hold_the_trees_hashes(log: Log) -> None:
    leaves = [leaf_hash(entry) for entry in log.entries]
    size = len(leaves)
    assert 512 < size < 768  # two full leaf tiles, then a partial one
    full = get(log, "tile/0/001")
    assert full.status_code == 200
    assert full.content == b"".join(leaves[256:512])
    assert "immutable" in full.headers["cache-control"]
    width = size - 512
    partial = get(log, f"tile/0/002.p/{width}")
    assert partial.content == b"".join(leaves[512:])
    assert get(log, "tile/0/002.p/3").content == b"".join(leaves[512:515])  # a narrower prefix
    assert get(log, "tile/0/002").status_code == 404  # not full yet
    tree = MerkleTree.from_leaf_hashes(leaves)
    level1 = get(log, "tile/1/000.p/2")  # two complete subtrees of 256 leaves
    assert level1.content == tree.node(8, 0) + tree.node(8, 1)
    bundle = get(log, "tile/entries/000")
    assert read_entry_bundle(bundle.content) == log.entries[:256]


@pytest.mark.parametrize(
    "path", ["tile/0/1", "tile/0/x000/001", "tile/0/000.p/0", "tile/0/000.p/256", "tile/x/000"]
)
def test_a_path_the_spec_does_not_name_is_not_found(log: Log, path: str) -> None:
    assert get(log, path).status_code == 404


def _go_verifier(tmp_path: Path) -> Path:
    if shutil.which("go") is None:
        pytest.skip("go is not installed (.ci/test-parts installs Debian's golang-go)")
    if not (GOPATH / "src" / "golang.org" / "x" / "mod" / "sumdb" / "tlog").is_dir():
        pytest.skip("golang.org/x/mod is not installed (Debian's golang-golang-x-mod-dev)")
    binary = tmp_path / "verifier"
    env = {**os.environ, "GO111MODULE": "off", "GOPATH": str(GOPATH)}
    env.setdefault("GOCACHE", str(tmp_path / "gocache"))
    built = subprocess.run(
        ["go", "build", "-o", str(binary), "."],
        cwd=VERIFIER_SOURCE,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    return binary


def test_gos_tlog_and_note_packages_verify_the_log(log: Log, tmp_path: Path) -> None:
    verifier = _go_verifier(tmp_path)
    old_size, old_root = log.old
    old = [str(old_size), base64.b64encode(old_root).decode()]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(verifier), log.url, *args], capture_output=True, text=True, timeout=120
        )

    checked = run(log.key, *old)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.startswith(f"OK size={len(log.entries)} ")
    assert f"entries={len(log.entries)}" in checked.stdout

    forged_root = base64.b64encode(bytes(32)).decode()
    forked = run(log.key, str(old_size), forged_root)
    assert forked.returncode == 1
    assert f"does not extend the old tree of {old_size}" in forked.stdout

    other = ledgerflow("pubkey", "--db", str(tmp_path / "other.db")).stdout.strip()
    wrong_key = run(other)
    assert wrong_key.returncode == 1 and "checkpoint note" in wrong_key.stdout


def test_verify_consistency_reads_the_public_log_alone(log: Log, tmp_path: Path) -> None:
    old = tmp_path / "old.note"
    old.write_bytes(log.old_note)
    checked = ledgerflow(
        "verify-consistency", "--old", str(old), "--key", log.key, "--url", log.url
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.startswith(f"OK: consistent: the log grew from size {log.old[0]}, ")

    # A checkpoint of another history with the same origin and key: a fork.
    other = tmp_path / "other" / "ledger.db"
    other.parent.mkdir()
    shutil.copy2(f"{log.db}.signing-key", f"{other}.signing-key")
    append(other, 10)
    forged = tmp_path / "forged.note"
    made = ledgerflow("checkpoint", "--out", str(forged), "--db", str(other))
    assert made.returncode == 0, made.stderr
    forked = ledgerflow(
        "verify-consistency", "--old", str(forged), "--key", log.key, "--url", log.url
    )
    assert forked.returncode == 1
    assert forked.stdout.startswith("FAILED: FORK: the log at size ")
