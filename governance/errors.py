"""Errors of the audit ledger: its Merkle tree, its proofs and its signed checkpoints.

Every message names the broken bound or field and the values met, so that an auditor can tell a
malformed input from a log that lies.
"""

from __future__ import annotations

from kernel.errors import LedgerflowError


class LedgerError(LedgerflowError):
    """Base of every error raised by the audit ledger."""


class TreeError(LedgerError, ValueError):
    """A `MerkleTree` was asked for an index or size beyond it, or given a malformed leaf hash."""


class ProofError(LedgerError, ValueError):
    """A Merkle proof does not verify: bad bounds, bad hash or proof length, or wrong roots."""


class RootMismatchError(ProofError):
    """A proof is well formed but leads to a root other than the one it must prove.

    `expected` is the root the caller trusts, `calculated` the root the proof leads to.
    """

    def __init__(self, message: str, *, expected: bytes, calculated: bytes) -> None:
        super().__init__(message)
        self.expected = expected
        self.calculated = calculated


class CheckpointError(LedgerError, ValueError):
    """A key, checkpoint or signed note is malformed, or its signatures do not verify."""


class ChainError(LedgerError):
    """An append or a checkpoint does not extend the stored log (wrong seq, prev_hash or size),
    or the stored log does not match its own checkpoints."""


class LedgerClosedError(LedgerError):
    """The ledger was closed, or its writer stopped after a failure it could not recover from."""


class BundleError(LedgerError, ValueError):
    """A proof bundle is malformed, or its envelope does not hash to the entry it claims."""
