"""RFC 6962 / RFC 9162 Merkle tree of the audit ledger, and the proof checks an auditor runs.

Hashing (RFC 9162 §2.1.1): a leaf is `SHA-256(0x00 || data)`, an interior node is
`SHA-256(0x01 || left || right)`, the empty tree is `SHA-256("")`. The ledger's leaves are the
envelopes' 32-byte entry hashes, so a log leaf hash is `leaf_hash(entry_hash)`.

`MerkleTree` is append-only and keeps every complete, aligned subtree hash it has computed:
level k holds, 32 bytes each in one `bytearray`, the hashes of the subtrees of 2**k leaves that
start at a multiple of 2**k. Any tree of size n <= size is the fold of at most log2(n) of those
stored subtrees, so historical roots and proofs cost O(log n) hashes, never O(n). A million
leaves take about 64 MB (twice the leaf hashes).

The verification functions need no tree: an offline auditor holding only a leaf hash, sizes, roots
and a proof can run them. They check every precondition before hashing and raise `ProofError`
naming the broken bound and its values, or `RootMismatchError` when a well-formed proof leads to
another root.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

from governance.errors import ProofError, RootMismatchError, TreeError

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()

_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"
_sha256 = hashlib.sha256


def leaf_hash(data: bytes) -> bytes:
    """Hash of a leaf holding `data`: SHA-256(0x00 || data)."""
    return _sha256(_LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """Hash of an interior node over two child hashes: SHA-256(0x01 || left || right)."""
    return _sha256(_NODE_PREFIX + left + right).digest()


def _split(count: int) -> int:
    """The largest power of two strictly below `count` (RFC 9162's k); requires count >= 2."""
    return 1 << ((count - 1).bit_length() - 1)


def _trailing_zeros(value: int) -> int:
    """Number of trailing zero bits of `value`; requires value >= 1."""
    return (value & -value).bit_length() - 1


class MerkleTree:
    """An append-only RFC 6962 Merkle tree that can answer for any of its past sizes.

    Indexes are 0-based; sizes count leaves. Methods taking `size=None` use the current size.
    """

    __slots__ = ("_levels", "_size")

    def __init__(self) -> None:
        self._levels: list[bytearray] = [bytearray()]
        self._size = 0

    @classmethod
    def from_leaf_hashes(cls, hashes: Iterable[bytes]) -> MerkleTree:
        """Rebuild a tree from stored leaf hashes (each 32 bytes), in log order.

        Hashes level by level instead of replaying appends, which is faster for a bulk load.
        """
        tree = cls()
        bottom = tree._levels[0]
        for position, value in enumerate(hashes):
            if len(value) != HASH_SIZE:
                raise TreeError(f"leaf hash {position} is {len(value)} bytes, expected {HASH_SIZE}")
            bottom += value
        tree._size = len(bottom) // HASH_SIZE
        tree._settle()
        return tree

    def extend_leaf_hashes(self, hashes: bytes | bytearray) -> None:
        """Append leaf hashes given as one concatenation of 32-byte hashes, in log order.

        The new complete subtrees are hashed a level at a time, after all of them are in:
        cheaper per leaf than appending them one by one (the same node hashes, fewer calls).
        """
        if len(hashes) % HASH_SIZE:
            raise TreeError(f"{len(hashes)} bytes of leaf hashes: not a multiple of {HASH_SIZE}")
        self._levels[0] += hashes
        self._size = len(self._levels[0]) // HASH_SIZE
        self._settle()

    def _settle(self) -> None:
        """Hash every complete aligned subtree not hashed yet, a level at a time."""
        levels, pair, level = self._levels, 2 * HASH_SIZE, 0
        while len(levels[level]) >= pair:
            if len(levels) == level + 1:
                levels.append(bytearray())
            below, above = levels[level], levels[level + 1]
            # Each node covers two below it: go on after the last pair already hashed. The view
            # must be released before anything may resize `below` again.
            with memoryview(below) as view:
                for offset in range(2 * len(above), len(below) - pair + 1, pair):
                    above += _sha256(_NODE_PREFIX + view[offset : offset + pair]).digest()
            level += 1

    @property
    def size(self) -> int:
        """Number of leaves appended so far."""
        return self._size

    def append(self, leaf_data: bytes) -> int:
        """Append a leaf holding `leaf_data` (hashed with `leaf_hash`); return its index."""
        return self._push(leaf_hash(leaf_data))

    def append_leaf_hash(self, hash_: bytes) -> int:
        """Append an already computed 32-byte leaf hash; return its index."""
        if len(hash_) != HASH_SIZE:
            raise TreeError(f"leaf hash is {len(hash_)} bytes, expected {HASH_SIZE}")
        return self._push(hash_)

    def _push(self, hash_: bytes) -> int:
        index = self._size
        levels = self._levels
        levels[0] += hash_
        # Each trailing 1 bit of the new leaf's index completes one more subtree, a level higher:
        # amortised, one node hash per append.
        level, carry = 0, index
        while carry & 1:
            if len(levels) == level + 1:
                levels.append(bytearray())
            levels[level + 1] += _sha256(_NODE_PREFIX + levels[level][-2 * HASH_SIZE :]).digest()
            level += 1
            carry >>= 1
        self._size = index + 1
        return index

    def leaf_hash_at(self, index: int) -> bytes:
        """The leaf hash stored at `index`; requires 0 <= index < size."""
        self._check_index(index, self._size)
        return self._stored(0, index)

    def node(self, level: int, position: int) -> bytes:
        """The hash of the complete subtree of 2**level leaves starting at leaf
        position * 2**level (level 0: a leaf hash); it must be complete in the tree now."""
        if not 0 <= position < self._size >> level:
            raise TreeError(f"no complete subtree at level {level}, position {position}")
        return self._stored(level, position)

    def root(self, size: int | None = None) -> bytes:
        """Root of the tree over the first `size` leaves; requires 0 <= size <= current size."""
        size = self._check_size(size)
        return self._range_hash(0, size) if size else EMPTY_ROOT

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """RFC 9162 §2.1.3.1 inclusion proof of leaf `index` in the tree of `size` leaves.

        Requires 0 <= size <= current size and 0 <= index < size. Hashes are ordered from the
        leaf's sibling up to the root's child.
        """
        size = self._check_size(size)
        self._check_index(index, size)
        proof: list[bytes] = []
        start, count = 0, size
        # Walk down from the root to the leaf, collecting the sibling of each subtree entered.
        while count > 1:
            half = _split(count)
            if index - start < half:
                proof.append(self._range_hash(start + half, count - half))
                count = half
            else:
                proof.append(self._range_hash(start, half))
                start, count = start + half, count - half
        proof.reverse()
        return proof

    def consistency_proof(self, size1: int, size2: int | None = None) -> list[bytes]:
        """RFC 9162 §2.1.4.1 proof that the tree of `size1` leaves is a prefix of `size2`'s.

        Requires 1 <= size1 <= size2 <= current size; equal sizes give an empty proof.
        """
        size2 = self._check_size(size2)
        if not 1 <= size1 <= size2:
            raise TreeError(f"size1 {size1} is out of range 1..{size2} (size2)")
        proof: list[bytes] = []
        start, count, old = 0, size2, size1
        # The old tree's own root is left out of the proof only while it is a left-edge subtree.
        on_left_edge = True
        while old != count:
            half = _split(count)
            if old <= half:
                proof.append(self._range_hash(start + half, count - half))
                count = half
            else:
                proof.append(self._range_hash(start, half))
                start, count, old = start + half, count - half, old - half
                on_left_edge = False
        if not on_left_edge:
            proof.append(self._range_hash(start, count))
        proof.reverse()
        return proof

    def _check_size(self, size: int | None) -> int:
        if size is None:
            return self._size
        if not 0 <= size <= self._size:
            raise TreeError(f"size {size} is out of range for a tree of {self._size} leaves")
        return size

    @staticmethod
    def _check_index(index: int, size: int) -> None:
        if not 0 <= index < size:
            raise TreeError(f"index {index} is out of range for tree size {size}")

    def _stored(self, level: int, position: int) -> bytes:
        offset = position * HASH_SIZE
        return bytes(self._levels[level][offset : offset + HASH_SIZE])

    def _range_hash(self, start: int, count: int) -> bytes:
        """RFC 9162 MTH of leaves [start, start + count).

        Requires count >= 1, start + count <= size, and `start` a multiple of the smallest power
        of two >= count (true of every subtree the RFC recursion visits): the range is then the
        stored aligned subtrees given by count's binary digits, largest (leftmost) first.
        """
        chunks: list[bytes] = []
        offset = start
        for level in reversed(range(count.bit_length())):
            if count >> level & 1:
                chunks.append(self._stored(level, offset >> level))
                offset += 1 << level
        result = chunks.pop()
        while chunks:
            result = node_hash(chunks.pop(), result)
        return result


def inclusion_proof_length(index: int, size: int) -> int:
    """Number of hashes in the inclusion proof of `index` in a tree of `size` leaves.

    Requires 0 <= index < size. Below level `inner` the leaf has a sibling at every level; above
    it, the path runs along the tree's right border and has a (left) sibling only where `index`
    has a 1 bit.
    """
    inner = (index ^ (size - 1)).bit_length()
    return inner + (index >> inner).bit_count()


def consistency_proof_length(size1: int, size2: int) -> int:
    """Number of hashes in the consistency proof between sizes; requires 1 <= size1 < size2.

    It is the inclusion path of the old tree's last leaf, less the levels inside its last complete
    subtree, plus that subtree's hash unless it is the whole old tree (then it is `root1`).
    """
    last = size1 - 1
    inner = (last ^ (size2 - 1)).bit_length()
    shift = _trailing_zeros(size1)
    seed = 0 if size1 == 1 << shift else 1
    return seed + (inner - shift) + (last >> inner).bit_count()


def _require_hash(name: str, value: bytes) -> None:
    if len(value) != HASH_SIZE:
        raise ProofError(f"{name} is {len(value)} bytes, expected {HASH_SIZE}")


def _require_proof(proof: Sequence[bytes], expected: int, what: str) -> None:
    if len(proof) != expected:
        raise ProofError(f"proof has {len(proof)} hashes, expected {expected} for {what}")
    for position, value in enumerate(proof):
        _require_hash(f"proof[{position}]", value)


def _require_root(expected: bytes, calculated: bytes, what: str) -> None:
    if calculated != expected:
        raise RootMismatchError(
            f"{what} leads to root {calculated.hex()}, not the expected {expected.hex()}",
            expected=expected,
            calculated=calculated,
        )


def root_from_inclusion_proof(
    leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes]
) -> bytes:
    """The root an inclusion proof leads to (RFC 9162 §2.1.3.2 without the final comparison).

    Preconditions, checked: 0 <= index < size; `leaf_hash` and every proof hash are 32 bytes;
    the proof has exactly `inclusion_proof_length(index, size)` hashes.
    """
    if not 0 <= index < size:
        raise ProofError(f"index {index} is out of range for tree size {size}")
    _require_hash("leaf hash", leaf_hash)
    what = f"an inclusion proof of index {index} in tree size {size}"
    _require_proof(proof, inclusion_proof_length(index, size), what)
    inner = (index ^ (size - 1)).bit_length()
    result = leaf_hash
    for level, sibling in enumerate(proof[:inner]):
        result = node_hash(sibling, result) if index >> level & 1 else node_hash(result, sibling)
    for sibling in proof[inner:]:
        result = node_hash(sibling, result)
    return result


def verify_inclusion(
    leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Check that `proof` shows leaf `leaf_hash` at `index` in the tree of `size` with `root`.

    Preconditions as `root_from_inclusion_proof`, and `root` is 32 bytes. Raises `ProofError` on
    a broken precondition, `RootMismatchError` when the proof leads elsewhere.
    """
    _require_hash("root", root)
    calculated = root_from_inclusion_proof(leaf_hash, index, size, proof)
    _require_root(root, calculated, f"inclusion proof of index {index} in tree size {size}")


def verify_consistency(
    size1: int, size2: int, proof: Sequence[bytes], root1: bytes, root2: bytes
) -> None:
    """Check that the tree of `size1` leaves with `root1` is a prefix of `size2`'s with `root2`.

    Preconditions, checked: 1 <= size1 <= size2 (a proof from the empty tree proves nothing: RFC
    9162 asks 0 < first, and the transparency-dev vectors refuse it even for 0 -> 0). Equal sizes
    need an empty proof and equal roots. Otherwise both roots and every proof hash are 32 bytes
    and the proof has exactly `consistency_proof_length(size1, size2)` hashes. Raises
    `ProofError` on a broken precondition, `RootMismatchError` when the proof does not lead to
    both roots.
    """
    if size1 > size2:
        raise ProofError(f"size1 {size1} is greater than size2 {size2}")
    if size1 < 1:
        raise ProofError(f"size1 {size1} must be at least 1: nothing is proved from an empty tree")
    if size1 == size2:
        _verify_same_size(size1, proof, root1, root2)
        return
    _require_hash("root1", root1)
    _require_hash("root2", root2)
    what = f"a consistency proof from size {size1} to size {size2}"
    _require_proof(proof, consistency_proof_length(size1, size2), what)
    calculated1, calculated2 = _consistency_roots(size1, size2, proof, root1)
    _require_root(root1, calculated1, f"consistency proof from size {size1} (root1)")
    _require_root(root2, calculated2, f"consistency proof to size {size2} (root2)")


def _verify_same_size(size: int, proof: Sequence[bytes], root1: bytes, root2: bytes) -> None:
    # Only byte equality is asked here: the reference vectors accept equal roots of any length.
    if proof:
        raise ProofError(f"sizes are equal ({size}) so the proof must be empty, not {len(proof)}")
    _require_root(root1, root2, f"a tree of size {size} seen twice")


def _consistency_roots(
    size1: int, size2: int, proof: Sequence[bytes], root1: bytes
) -> tuple[bytes, bytes]:
    """The (old, new) roots a well-formed consistency proof leads to; preconditions checked."""
    last = size1 - 1
    inner = (last ^ (size2 - 1)).bit_length()
    shift = _trailing_zeros(size1)
    hashes = iter(proof)
    # Both trees share the old tree's last complete subtree (2**shift leaves ending at `last`);
    # when that subtree is the whole old tree the proof omits it, since it is root1.
    seed = root1 if size1 == 1 << shift else next(hashes)
    old = new = seed
    for level in range(shift, inner):
        sibling = next(hashes)
        if last >> level & 1:
            old, new = node_hash(sibling, old), node_hash(sibling, new)
        else:
            # A right sibling holds only leaves past the old tree: it belongs to the new root.
            new = node_hash(new, sibling)
    for sibling in hashes:
        old, new = node_hash(sibling, old), node_hash(sibling, new)
    return old, new
