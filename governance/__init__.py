"""ledgerflow's governance ledger: hash-chained envelopes in an append-only store, a Merkle tree
over them, signed checkpoints, and the audits that check all of it.

    envelope      GovernanceEnvelope, EnvelopeKind: the chained audit records
    policy        PolicySnapshot: the rules in force, stored once, referenced by hash
    storage       LedgerStore, the storage port, its SQLite and PostgreSQL stores over one
                  shared base, the SQL layer of the operational tables, database URLs
    runs, journal the run index (with leases) and the ledger-backed kernel Journal
    ledger        Ledger: one writer with group commit, automatic checkpoints, proof bundles
    verify        verify_ledger, verify_proof_bundle: audits that trust nothing they read
    merkle        MerkleTree and the RFC 9162 proof checks
    checkpoint    C2SP signed-note checkpoints with Ed25519 keys

Imports the kernel, the standard library (sqlite3), asyncpg (PostgreSQL only), cryptography,
pydantic and rfc8785; never the gateway.
"""

from governance.checkpoint import (
    Checkpoint,
    SignedCheckpoint,
    Signer,
    Verifier,
    open_checkpoint,
    sign_checkpoint,
)
from governance.envelope import (
    GENESIS_HASH,
    EnvelopeDraft,
    EnvelopeKind,
    GovernanceEnvelope,
)
from governance.errors import (
    BundleError,
    ChainError,
    CheckpointError,
    LedgerClosedError,
    LedgerError,
    ProofError,
    RootMismatchError,
    TreeError,
)
from governance.ledger import Ledger, WriterStats
from governance.merkle import MerkleTree, leaf_hash, verify_consistency, verify_inclusion
from governance.policy import PolicySnapshot
from governance.storage.ledger_port import CheckpointRecord, EnvelopeQuery, EnvelopeRow, LedgerStore
from governance.storage.sqlite_ledger import SCHEMA_VERSION, SqliteLedgerStore
from governance.verify import (
    VerifyReport,
    verify_ledger,
    verify_ledger_at,
    verify_proof_bundle,
)
from kernel.errors import SchemaVersionError  # one class for every stored format

__all__ = [
    "GENESIS_HASH",
    "SCHEMA_VERSION",
    "BundleError",
    "ChainError",
    "Checkpoint",
    "CheckpointError",
    "CheckpointRecord",
    "EnvelopeDraft",
    "EnvelopeKind",
    "EnvelopeQuery",
    "EnvelopeRow",
    "GovernanceEnvelope",
    "Ledger",
    "LedgerClosedError",
    "LedgerError",
    "LedgerStore",
    "MerkleTree",
    "PolicySnapshot",
    "ProofError",
    "RootMismatchError",
    "SchemaVersionError",
    "SignedCheckpoint",
    "Signer",
    "SqliteLedgerStore",
    "TreeError",
    "Verifier",
    "VerifyReport",
    "WriterStats",
    "leaf_hash",
    "open_checkpoint",
    "sign_checkpoint",
    "verify_consistency",
    "verify_inclusion",
    "verify_ledger",
    "verify_ledger_at",
    "verify_proof_bundle",
]
