"""The ledger's Merkle tree in the C2SP tlog-tiles layout, so generic tlog tooling verifies it.

Tiles have height 8: tile (L, N) holds the hashes of tree level 8*L at positions 256*N up to
256*N + 255, and a partial tile (`.p/W`) the first W of them, for a tree whose size leaves
only W there. Level 0 hashes are the leaf hashes, SHA-256(0x00 || entry); an entry of this log
is the envelope's 32-byte entry hash, which commits to the envelope's canonical bytes
(governance.envelope), so an inclusion proof of the entry is one of the envelope. Entry bundles
(`tile/entries/N`) hold each entry as a big-endian uint16 length and its bytes.

Paths are parsed strictly: a path that is not one the spec names is None (a 404).
"""

from __future__ import annotations

import re
from collections.abc import Callable

from governance.errors import TreeError
from governance.merkle import MerkleTree, node_hash

TILE_HEIGHT = 8
TILE_WIDTH = 1 << TILE_HEIGHT
_ELEMENT = re.compile(r"x\d{3}")
_LAST = re.compile(r"\d{3}")


def encode_index(index: int) -> str:
    """N as the spec writes it: groups of three digits, all but the last prefixed with x."""
    digits = f"{index:03d}"
    digits = "0" * (-len(digits) % 3) + digits
    groups = [digits[i : i + 3] for i in range(0, len(digits), 3)]
    return "/".join([*(f"x{g}" for g in groups[:-1]), groups[-1]])


def parse_tile_path(path: str) -> tuple[str | int, int, int] | None:
    """`L/N[.p/W]` or `entries/N[.p/W]` -> (level or "entries", N, width), else None."""
    head, _, rest = path.partition("/")
    if head == "entries":
        level: str | int = "entries"
    elif head.isdigit() and head == str(int(head)) and int(head) <= 63:
        level = int(head)
    else:
        return None
    width = TILE_WIDTH
    if ".p/" in rest:
        rest, _, width_text = rest.partition(".p/")
        if not width_text.isdigit() or width_text != str(int(width_text)):
            return None
        width = int(width_text)
        if not 1 <= width < TILE_WIDTH:
            return None
    parts = rest.split("/")
    if not parts or not all(_ELEMENT.fullmatch(p) for p in parts[:-1]):
        return None
    if not _LAST.fullmatch(parts[-1]):
        return None
    index = int("".join(p.lstrip("x") for p in parts))
    if encode_index(index) != rest:  # one spelling per index: no superfluous leading groups
        return None
    return level, index, width


def tile_width(tree_size: int, level: int, index: int) -> int:
    """How many hashes tile (level, index) holds for a tree of `tree_size` leaves (0: none)."""
    complete = tree_size >> (TILE_HEIGHT * level)
    return max(0, min(TILE_WIDTH, complete - index * TILE_WIDTH))


def hash_tile(tree: MerkleTree, tree_size: int, level: int, index: int, width: int) -> bytes | None:
    """The tile's bytes (width hashes of 32 bytes), or None when a tree of `tree_size` does
    not hold that many there (a full tile only once it is full). Hashes never change once
    complete, so a partial tile narrower than the current one is a prefix of it and served."""
    if width > tile_width(tree_size, level, index):
        return None
    first = index * TILE_WIDTH
    return b"".join(tree.node(TILE_HEIGHT * level, first + i) for i in range(width))


def entry_bundle(entries: list[bytes]) -> bytes:
    """Entries as a tile/entries bundle: each a big-endian uint16 length, then its bytes."""
    out = bytearray()
    for entry in entries:
        out += len(entry).to_bytes(2, "big") + entry
    return bytes(out)


def read_entry_bundle(data: bytes) -> list[bytes]:
    entries, offset = [], 0
    while offset < len(data):
        size = int.from_bytes(data[offset : offset + 2], "big")
        entries.append(data[offset + 2 : offset + 2 + size])
        offset += 2 + size
    return entries


class TiledTree(MerkleTree):
    """A tree of `size` leaves read from a tlog's hash tiles, as a remote auditor sees it:
    `fetch(level, index, width)` returns a tile's bytes. Only the nodes a proof asks for are
    fetched (each tile once). Nothing fetched is trusted: check `root()` against the signed
    checkpoint before believing a proof built from it."""

    __slots__ = ("_fetch", "_tiles")

    def __init__(self, size: int, fetch: Callable[[int, int, int], bytes]) -> None:
        super().__init__()
        self._size = size
        self._fetch = fetch
        self._tiles: dict[tuple[int, int], bytes] = {}

    def _stored(self, level: int, position: int) -> bytes:
        tile_level, rise = divmod(level, TILE_HEIGHT)
        first = position << rise  # the node's leftmost hash at level 8 * tile_level
        index, offset = divmod(first, TILE_WIDTH)
        hashes = self._tile(tile_level, index)
        nodes = [hashes[i * 32 : (i + 1) * 32] for i in range(offset, offset + (1 << rise))]
        if len(nodes) != 1 << rise or any(len(node) != 32 for node in nodes):
            raise TreeError(
                f"tile {tile_level}/{index} is too short for the tree size {self._size}"
            )
        while len(nodes) > 1:
            nodes = [node_hash(nodes[i], nodes[i + 1]) for i in range(0, len(nodes), 2)]
        return nodes[0]

    def _tile(self, level: int, index: int) -> bytes:
        key = (level, index)
        if key not in self._tiles:
            width = tile_width(self._size, level, index)
            data = self._fetch(level, index, width)
            if len(data) != 32 * width:
                raise TreeError(f"tile {level}/{index} has {len(data)} bytes, not {32 * width}")
            self._tiles[key] = data
        return self._tiles[key]


def tile_path(level: int, index: int, width: int) -> str:
    """The path of a hash tile under the log's prefix, as the spec writes it."""
    partial = "" if width == TILE_WIDTH else f".p/{width}"
    return f"tile/{level}/{encode_index(index)}{partial}"
