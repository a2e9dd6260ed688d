"""The Merkle tree against the transparency-dev/merkle vectors, the RFC 9162 definitions, and
properties over random sizes."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from governance.errors import LedgerError, ProofError, RootMismatchError, TreeError
from governance.merkle import (
    EMPTY_ROOT,
    MerkleTree,
    consistency_proof_length,
    inclusion_proof_length,
    leaf_hash,
    node_hash,
    root_from_inclusion_proof,
    verify_consistency,
    verify_inclusion,
)

DATA = Path(__file__).parent / "data" / "merkle"
INCLUSION_FILES = sorted(DATA.glob("inclusion/**/*.json"))
CONSISTENCY_FILES = sorted(DATA.glob("consistency/**/*.json"))


def _ids(paths: Sequence[Path]) -> list[str]:
    return [path.relative_to(DATA).as_posix() for path in paths]


def _load(path: Path) -> dict[str, Any]:
    case: dict[str, Any] = json.loads(path.read_text())
    return case


def _b64(text: str) -> bytes:
    return base64.b64decode(text)


def _proof(case: dict[str, Any]) -> list[bytes]:
    return [_b64(item) for item in case["proof"] or []]


def _accepted(check: Callable[[], None]) -> bool:
    try:
        check()
    except LedgerError:
        return False
    return True


# Reference: the RFC 9162 §2.1 recursive definitions, written as plainly as possible.


def _split(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def _mth(leaves: Sequence[bytes]) -> bytes:
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return leaf_hash(leaves[0])
    k = _split(len(leaves))
    return node_hash(_mth(leaves[:k]), _mth(leaves[k:]))


def _path(m: int, leaves: Sequence[bytes]) -> list[bytes]:
    if len(leaves) == 1:
        return []
    k = _split(len(leaves))
    if m < k:
        return [*_path(m, leaves[:k]), _mth(leaves[k:])]
    return [*_path(m - k, leaves[k:]), _mth(leaves[:k])]


def _subproof(m: int, leaves: Sequence[bytes], complete: bool) -> list[bytes]:
    if m == len(leaves):
        return [] if complete else [_mth(leaves)]
    k = _split(len(leaves))
    if m <= k:
        return [*_subproof(m, leaves[:k], complete), _mth(leaves[k:])]
    return [*_subproof(m - k, leaves[k:], False), _mth(leaves[:k])]


def _leaves(count: int) -> list[bytes]:
    return [i.to_bytes(4, "big") for i in range(count)]


def _tree(leaves: Sequence[bytes]) -> MerkleTree:
    tree = MerkleTree()
    for leaf in leaves:
        tree.append(leaf)
    return tree


def _flip(value: bytes, bit: int) -> bytes:
    flipped = bytearray(value)
    flipped[bit // 8] ^= 1 << (bit % 8)
    return bytes(flipped)


# The published vectors.


def test_every_vector_file_is_collected() -> None:
    assert len(INCLUSION_FILES) == 98
    assert len(CONSISTENCY_FILES) == 98


@pytest.mark.parametrize("path", INCLUSION_FILES, ids=_ids(INCLUSION_FILES))
def test_inclusion_vector(path: Path) -> None:
    case = _load(path)

    def check() -> None:
        verify_inclusion(
            _b64(case["leafHash"]),
            case["leafIdx"],
            case["treeSize"],
            _proof(case),
            _b64(case["root"]),
        )

    assert _accepted(check) is not case["wantErr"], case["desc"]


@pytest.mark.parametrize("path", CONSISTENCY_FILES, ids=_ids(CONSISTENCY_FILES))
def test_consistency_vector(path: Path) -> None:
    case = _load(path)

    def check() -> None:
        verify_consistency(
            case["size1"], case["size2"], _proof(case), _b64(case["root1"]), _b64(case["root2"])
        )

    assert _accepted(check) is not case["wantErr"], case["desc"]


def test_reference_roots_at_every_size() -> None:
    reference = _load(DATA / "roots.json")
    inputs = [bytes.fromhex(item) for item in reference["leaf_inputs_hex"]]
    roots = [bytes.fromhex(item) for item in reference["roots_hex"]]
    tree = MerkleTree()
    assert tree.root() == roots[0] == EMPTY_ROOT
    for size, data in enumerate(inputs, 1):
        tree.append(data)
        assert tree.root() == roots[size]
    assert [tree.root(size) for size in range(len(inputs) + 1)] == roots
    rebuilt = MerkleTree.from_leaf_hashes(leaf_hash(data) for data in inputs)
    assert [rebuilt.root(size) for size in range(len(inputs) + 1)] == roots


def test_happy_path_vectors_are_what_the_tree_produces() -> None:
    # The vectors' tree is the roots.json tree: our proofs must be byte-identical to theirs.
    inputs = [bytes.fromhex(item) for item in _load(DATA / "roots.json")["leaf_inputs_hex"]]
    tree = _tree(inputs)
    for path in DATA.glob("inclusion/[0-9]*/happy-path.json"):
        case = _load(path)
        assert tree.inclusion_proof(case["leafIdx"], case["treeSize"]) == _proof(case)
    for path in DATA.glob("consistency/[0-9]*/happy-path.json"):
        case = _load(path)
        assert tree.consistency_proof(case["size1"], case["size2"]) == _proof(case)


# The tree against the RFC definitions.


def test_roots_and_proofs_match_the_rfc_definitions() -> None:
    leaves = _leaves(40)
    tree = _tree(leaves)
    for n in range(1, len(leaves) + 1):
        assert tree.root(n) == _mth(leaves[:n])
        for m in range(n):
            assert tree.inclusion_proof(m, n) == _path(m, leaves[:n])
        for m in range(1, n + 1):
            assert tree.consistency_proof(m, n) == _subproof(m, leaves[:n], True)


def test_proof_lengths_match_the_rfc_definitions() -> None:
    leaves = _leaves(70)
    for n in range(1, len(leaves) + 1):
        for m in range(n):
            assert inclusion_proof_length(m, n) == len(_path(m, leaves[:n]))
        for m in range(1, n):
            assert consistency_proof_length(m, n) == len(_subproof(m, leaves[:n], True))


def test_rebuild_from_leaf_hashes_matches_appends() -> None:
    for count in [*range(0, 70), 1023, 1024, 1025, 5000]:
        tree = _tree(_leaves(count))
        rebuilt = MerkleTree.from_leaf_hashes(tree.leaf_hash_at(i) for i in range(count))
        assert rebuilt.size == count
        assert rebuilt.root() == tree.root()
        rebuilt.append(b"next")
        tree.append(b"next")
        assert rebuilt.root() == tree.root()
        assert rebuilt.inclusion_proof(count) == tree.inclusion_proof(count)


@settings(max_examples=60)
@given(st.lists(st.integers(min_value=0, max_value=40), max_size=8))
def test_leaf_hashes_extended_in_chunks_give_the_tree_of_appends(chunks: list[int]) -> None:
    total = sum(chunks)
    tree = _tree(_leaves(total))
    extended, done = MerkleTree(), 0
    for chunk in chunks:
        extended.extend_leaf_hashes(
            b"".join(tree.leaf_hash_at(i) for i in range(done, done + chunk))
        )
        done += chunk
        assert extended.size == done
        assert extended.root() == tree.root(done)
        if done:
            assert extended.consistency_proof(1, done) == tree.consistency_proof(1, done)
    for size in range(1, total + 1):
        assert extended.root(size) == tree.root(size)
        assert extended.consistency_proof(size, total) == tree.consistency_proof(size, total)
    extended.append(b"next")
    tree.append(b"next")
    assert extended.root() == tree.root()
    with pytest.raises(TreeError, match="multiple of 32"):
        extended.extend_leaf_hashes(b"short")


def test_append_returns_the_index_and_stores_the_leaf_hash() -> None:
    tree = MerkleTree()
    assert tree.append(b"a") == 0
    assert tree.append_leaf_hash(leaf_hash(b"b")) == 1
    assert tree.size == 2
    assert tree.leaf_hash_at(0) == hashlib.sha256(b"\x00a").digest()
    assert tree.root() == hashlib.sha256(b"\x01" + leaf_hash(b"a") + leaf_hash(b"b")).digest()


def test_tree_refuses_out_of_range_requests() -> None:
    tree = _tree(_leaves(3))
    with pytest.raises(TreeError, match="index 5 is out of range for tree size 3"):
        tree.inclusion_proof(5)
    with pytest.raises(TreeError, match="index 2 is out of range for tree size 2"):
        tree.inclusion_proof(2, 2)
    with pytest.raises(TreeError, match="size 4 is out of range for a tree of 3 leaves"):
        tree.root(4)
    with pytest.raises(TreeError, match=r"size1 0 is out of range 1\.\.3"):
        tree.consistency_proof(0)
    with pytest.raises(TreeError, match=r"size1 3 is out of range 1\.\.2"):
        tree.consistency_proof(3, 2)
    with pytest.raises(TreeError, match="index -1 is out of range"):
        tree.leaf_hash_at(-1)
    with pytest.raises(TreeError, match="leaf hash is 31 bytes, expected 32"):
        tree.append_leaf_hash(bytes(31))
    with pytest.raises(TreeError, match="leaf hash 1 is 33 bytes, expected 32"):
        MerkleTree.from_leaf_hashes([bytes(32), bytes(33)])
    assert tree.consistency_proof(3) == []


# Verification preconditions and their messages.


def test_inclusion_preconditions_name_the_broken_bound() -> None:
    good = bytes(32)
    with pytest.raises(ProofError, match="index 5 is out of range for tree size 3"):
        verify_inclusion(good, 5, 3, [good, good], good)
    with pytest.raises(ProofError, match="index 0 is out of range for tree size 0"):
        verify_inclusion(good, 0, 0, [], good)
    with pytest.raises(ProofError, match="leaf hash is 9 bytes, expected 32"):
        verify_inclusion(b"WrongLeaf", 0, 1, [], good)
    with pytest.raises(ProofError, match="root is 0 bytes, expected 32"):
        verify_inclusion(good, 0, 1, [], b"")
    with pytest.raises(
        ProofError, match=r"proof has 1 hashes, expected 2 .* index 0 in tree size 3"
    ):
        verify_inclusion(good, 0, 3, [good], good)
    with pytest.raises(ProofError, match=r"proof\[1\] is 31 bytes, expected 32"):
        verify_inclusion(good, 0, 3, [good, bytes(31)], good)


def test_consistency_preconditions_name_the_broken_bound() -> None:
    good = bytes(32)
    with pytest.raises(ProofError, match="size1 2 is greater than size2 1"):
        verify_consistency(2, 1, [], good, good)
    with pytest.raises(ProofError, match="size1 0 must be at least 1"):
        verify_consistency(0, 0, [], EMPTY_ROOT, EMPTY_ROOT)
    with pytest.raises(ProofError, match=r"sizes are equal \(4\) so the proof must be empty"):
        verify_consistency(4, 4, [good], good, good)
    with pytest.raises(ProofError, match="root2 is 12 bytes, expected 32"):
        verify_consistency(1, 2, [good], good, b"don't care 2")
    with pytest.raises(ProofError, match=r"proof has 0 hashes, expected 1 .* size 1 to size 2"):
        verify_consistency(1, 2, [], good, good)


def test_root_mismatch_carries_both_roots() -> None:
    tree = _tree(_leaves(5))
    proof = tree.inclusion_proof(3)
    wrong = bytes(32)
    with pytest.raises(RootMismatchError) as caught:
        verify_inclusion(tree.leaf_hash_at(3), 3, 5, proof, wrong)
    assert caught.value.expected == wrong
    assert caught.value.calculated == tree.root()
    assert root_from_inclusion_proof(tree.leaf_hash_at(3), 3, 5, proof) == tree.root()
    assert isinstance(caught.value, ProofError) and isinstance(caught.value, LedgerError)
    with pytest.raises(RootMismatchError, match="root1"):
        verify_consistency(3, 5, tree.consistency_proof(3), wrong, tree.root())


def test_every_single_bit_flip_is_caught() -> None:
    tree = _tree(_leaves(13))
    root, leaf = tree.root(), tree.leaf_hash_at(6)
    proof = tree.inclusion_proof(6)
    for position in range(len(proof)):
        for bit in range(256):
            changed = [*proof]
            changed[position] = _flip(proof[position], bit)
            with pytest.raises(RootMismatchError):
                verify_inclusion(leaf, 6, 13, changed, root)
    for bit in range(256):
        with pytest.raises(RootMismatchError):
            verify_inclusion(leaf, 6, 13, proof, _flip(root, bit))
        with pytest.raises(RootMismatchError):
            verify_inclusion(_flip(leaf, bit), 6, 13, proof, root)


# Properties over random sizes.


@settings(max_examples=40, deadline=None)
@given(
    size=st.integers(min_value=1, max_value=300),
    extra=st.integers(min_value=0, max_value=20),
    data=st.data(),
)
def test_every_proof_verifies_and_any_flipped_bit_fails(
    size: int, extra: int, data: st.DataObject
) -> None:
    # Leaves past `size` make every proof one over a historical tree.
    tree = _tree(_leaves(size + extra))
    root = tree.root(size)
    for index in range(size):
        verify_inclusion(
            tree.leaf_hash_at(index), index, size, tree.inclusion_proof(index, size), root
        )
    for size1 in range(1, size + 1):
        verify_consistency(size1, size, tree.consistency_proof(size1, size), tree.root(size1), root)

    index = data.draw(st.integers(0, size - 1), label="index")
    proof = tree.inclusion_proof(index, size)
    for position in range(len(proof)):
        changed = [*proof]
        changed[position] = _flip(proof[position], data.draw(st.integers(0, 255)))
        with pytest.raises(RootMismatchError):
            verify_inclusion(tree.leaf_hash_at(index), index, size, changed, root)
    with pytest.raises(RootMismatchError):
        flipped_root = _flip(root, data.draw(st.integers(0, 255)))
        verify_inclusion(tree.leaf_hash_at(index), index, size, proof, flipped_root)

    size1 = data.draw(st.integers(1, size), label="size1")
    root1 = tree.root(size1)
    proof = tree.consistency_proof(size1, size)
    for position in range(len(proof)):
        changed = [*proof]
        changed[position] = _flip(proof[position], data.draw(st.integers(0, 255)))
        with pytest.raises(RootMismatchError):
            verify_consistency(size1, size, changed, root1, root)
    with pytest.raises(RootMismatchError):
        verify_consistency(size1, size, proof, _flip(root1, data.draw(st.integers(0, 255))), root)
    with pytest.raises(RootMismatchError):
        verify_consistency(size1, size, proof, root1, _flip(root, data.draw(st.integers(0, 255))))
