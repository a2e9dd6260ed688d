"""Sealed envelopes and signed checkpoint records to feed a `LedgerStore` directly."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from governance.checkpoint import Checkpoint, Signer, sign_checkpoint
from governance.envelope import GENESIS_HASH, EnvelopeDraft, EnvelopeKind, GovernanceEnvelope
from governance.merkle import MerkleTree
from governance.policy import PolicySnapshot
from governance.storage.ledger_port import CheckpointRecord

POLICY = PolicySnapshot(name="store-tests")
ORIGIN = "ledgerflow.test/store"


def chain(count: int, start: int = 0, prev: str = GENESIS_HASH, **fields: Any) -> list[Any]:
    """`count` sealed envelopes from seq `start` after `prev`, alternating two executions."""
    envelopes: list[GovernanceEnvelope] = []
    for seq in range(start, start + count):
        draft = EnvelopeDraft.build(
            execution_id=fields.get("execution_id", f"run-{seq % 2}"),
            kind=fields.get("kind", EnvelopeKind.STEP),
            policy_hash=fields.get("policy_hash", POLICY.policy_hash),
            step_id=f"s{seq}",
            status="SUCCESS",
            payload={"seq": seq, "x": 0.5},
        )
        envelope = draft.seal(seq, prev, 1_000_000 + seq * 10)
        envelopes.append(envelope)
        prev = envelope.entry_hash
    return envelopes


class Checkpoints:
    """Signed checkpoint records over `envelopes` (a size past them gets the full root)."""

    def __init__(self, envelopes: Sequence[GovernanceEnvelope]) -> None:
        self.signer = Signer.generate(ORIGIN)
        self.tree = MerkleTree()
        for envelope in envelopes:
            self.tree.append(bytes.fromhex(envelope.entry_hash))

    def record(self, index: int, size: int) -> CheckpointRecord:
        root = self.tree.root(min(size, self.tree.size))
        note = sign_checkpoint(Checkpoint(ORIGIN, size, root), [self.signer])
        return CheckpointRecord(index, size, root, note, 5)
