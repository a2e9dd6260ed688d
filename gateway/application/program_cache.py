"""Loaded and governed programs, kept between calls.

A client that runs the same program again (inline, or saved under a name) would otherwise pay
for parsing, validation, compilation and the policy's budget caps on every call: most of the
service's own CPU time for a short program. Programs are immutable, so one loaded Program
serves every run of it.

Keys are exact: an inline body of plain JSON values by its repr (which, unlike its canonical
JSON, tells 1 from 1.0 and True; other bodies are not cached), a saved version by name, version
and hash, a governed program by its hash and the policy's. Failures are never cached: a bad
body is checked, and reported, again on every call. Bounded: least recently used out first.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping
from typing import Any, Generic, TypeVar

from kernel.canonical import canonical_json
from kernel.program import Program

V = TypeVar("V")
PROGRAMS_KEPT = 256


class _Recent(Generic[V]):
    def __init__(self, size: int) -> None:
        self._size = size
        self._items: OrderedDict[Hashable, V] = OrderedDict()

    def get(self, key: Hashable, make: Callable[[], V]) -> V:
        try:
            self._items.move_to_end(key)
            return self._items[key]
        except KeyError:
            value = make()  # raises for a bad program: nothing is kept
            self.put(key, value)
            return value

    def put(self, key: Hashable, value: V) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        if len(self._items) > self._size:
            self._items.popitem(last=False)


class ProgramCache:
    def __init__(self, size: int = PROGRAMS_KEPT) -> None:
        self._loaded: _Recent[Program] = _Recent(size)
        self._governed: _Recent[tuple[Program, Program, list[str]]] = _Recent(size)

    def inline(self, body: Mapping[str, Any], load: Callable[[], Program]) -> Program:
        try:
            canonical_json(body)  # plain JSON values only: their repr is exact
        except ValueError:  # a caller in Python passed other objects: load it each time
            return load()
        return self._loaded.get(("inline", repr(body)), load)

    def saved(self, name: str, version: int, digest: str, load: Callable[[], Program]) -> Program:
        return self._loaded.get(("saved", name, version, digest), load)

    def governed(
        self, program: Program, policy_hash: str, govern: Callable[[], tuple[Program, list[str]]]
    ) -> tuple[Program, list[str]]:
        """`govern()`'s (program under the policy, refusals), kept per program and policy.

        Kept for this very Program object (the one `inline` or `saved` returned): two bodies
        with one hash (1 and 1.0) are two loaded programs, so neither gets the other's."""
        key = (program.hash, policy_hash)
        kept = self._governed.get(key, lambda: (program, *govern()))
        if kept[0] is not program:
            kept = (program, *govern())
            self._governed.put(key, kept)
        return kept[1], list(kept[2])
