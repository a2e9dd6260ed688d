"""CapabilityRef: how a secret travels through a run without its value.

A secret in the state is the string `vault://secret/<id>` (so it survives JSON, the journal and a
resume unchanged). Only a `SecretResolver` (the vault implements it; `InMemorySecretResolver` is
for tests) turns a ref into its value, and the VM asks it only when handing arguments to a tool
that declared it reads secrets. Prompts get a placeholder; traces, the journal and envelopes get
the ref and a salted commitment to the value. After an erase the resolver reports the ref as
tombstoned and every projection shows TOMBSTONE.
"""

from __future__ import annotations

import hashlib
import re
import secrets as _secrets
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from kernel.canonical import canonical_json
from kernel.errors import LedgerflowError

SCHEME = "vault://secret/"
TOMBSTONE = "[REDACTED_TOMBSTONE]"
_REF = re.compile(r"^vault://secret/([A-Za-z0-9_-]{1,128})$")


class SecretError(LedgerflowError, LookupError):
    """A ref cannot be resolved: unknown, or erased (see `tombstoned`)."""

    def __init__(self, message: str, *, tombstoned: bool = False) -> None:
        super().__init__(message)
        self.tombstoned = tombstoned


@dataclass(frozen=True, slots=True)
class CapabilityRef:
    """A reference to a secret held by the vault."""

    ref_id: str

    def __post_init__(self) -> None:
        if _REF.match(SCHEME + self.ref_id) is None:
            raise ValueError(f"invalid secret ref id {self.ref_id!r}")

    @property
    def uri(self) -> str:
        return SCHEME + self.ref_id

    def __str__(self) -> str:
        return self.uri

    @classmethod
    def parse(cls, value: Any) -> CapabilityRef | None:
        """The ref if `value` is a `vault://secret/<id>` string (or a CapabilityRef), else None."""
        if isinstance(value, CapabilityRef):
            return value
        if type(value) is str and value.startswith(SCHEME):
            match = _REF.match(value)
            if match is not None:
                return cls(match.group(1))
        return None

    @classmethod
    def new(cls) -> CapabilityRef:
        return cls("sec_" + _secrets.token_hex(16))


def commitment(salt: bytes, value: Any) -> str:
    """Salted SHA-256 commitment to a secret value (hex). Without the salt, which is erased with
    the value, a commitment to a low-entropy value cannot be brute-forced."""
    return hashlib.sha256(b"ledgerflow.secret.v1" + salt + canonical_json(value)).hexdigest()


@runtime_checkable
class SecretResolver(Protocol):
    """The port the vault implements."""

    def resolve(self, ref: CapabilityRef) -> Any:
        """The secret value; SecretError (tombstoned=True after an erase) if unavailable."""
        ...

    def commitment(self, ref: CapabilityRef) -> str | None:
        """The salted commitment of the value, or None if the ref is unknown or erased."""
        ...

    def is_tombstoned(self, ref: CapabilityRef) -> bool: ...


class InMemorySecretResolver:
    """A resolver for tests and single-process use: values live in this object only."""

    def __init__(self) -> None:
        self._values: dict[str, tuple[Any, bytes, str | None]] = {}
        self._erased: set[str] = set()

    def put(self, value: Any, subject: str | None = None) -> CapabilityRef:
        ref = CapabilityRef.new()
        self._values[ref.ref_id] = (value, _secrets.token_bytes(16), subject)
        return ref

    def erase_subject(self, subject: str) -> list[CapabilityRef]:
        erased = [CapabilityRef(rid) for rid, (_, _, s) in self._values.items() if s == subject]
        for ref in erased:
            del self._values[ref.ref_id]
            self._erased.add(ref.ref_id)
        return erased

    def resolve(self, ref: CapabilityRef) -> Any:
        if ref.ref_id in self._erased:
            raise SecretError(f"secret {ref.uri} was erased", tombstoned=True)
        try:
            return self._values[ref.ref_id][0]
        except KeyError:
            raise SecretError(f"unknown secret {ref.uri}") from None

    def commitment(self, ref: CapabilityRef) -> str | None:
        entry = self._values.get(ref.ref_id)
        return None if entry is None else commitment(entry[1], entry[0])

    def is_tombstoned(self, ref: CapabilityRef) -> bool:
        return ref.ref_id in self._erased
