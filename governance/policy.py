"""Policy snapshots: the governance rules in force when an envelope was recorded.

A `PolicySnapshot` is stored once in the ledger and referenced from every envelope by its hash,
`policy_hash = SHA-256(JCS(snapshot))` in lowercase hex. So that one policy has one hash, a
snapshot is normalised on construction: name lists become sorted tuples without duplicates and
`max_cost_usd` becomes a plain decimal string without trailing zeros ("10.50" -> "10.5"). No
field is a float: money is a decimal string, durations are whole seconds.

`None` means "no limit" (or, for an allow-list, "everything"); an empty allow-list allows
nothing. A deny-list wins over an allow-list.
"""

from __future__ import annotations

import decimal
import fnmatch
import hashlib
import re
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, field_validator

from kernel.canonical import canonical_json

_DECIMAL = re.compile(r"[0-9]+(\.[0-9]+)?")

Limit = Annotated[StrictInt, Field(ge=0)]


def _names(value: Any) -> Any:
    """Sorted, duplicate-free tuple of a list of names (other values are left to pydantic)."""
    if isinstance(value, list | tuple | set | frozenset) and all(isinstance(v, str) for v in value):
        return tuple(sorted(set(value)))
    return value


class PolicySnapshot(BaseModel):
    """Tool and model allow/deny lists, budget caps and redaction rules, immutable."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: StrictStr | None = None
    tools_allow: tuple[StrictStr, ...] | None = None
    tools_deny: tuple[StrictStr, ...] = ()
    models_allow: tuple[StrictStr, ...] | None = None
    max_steps: Limit | None = None
    max_tokens: Limit | None = None
    max_cost_usd: StrictStr | None = None
    max_duration_seconds: Limit | None = None
    # Field names or fnmatch patterns (e.g. "card_*") whose values are redacted in projections.
    redact_fields: tuple[StrictStr, ...] = ()

    @field_validator("tools_allow", "tools_deny", "models_allow", "redact_fields", mode="before")
    @classmethod
    def _sorted_names(cls, value: Any) -> Any:
        return _names(value)

    @field_validator("max_cost_usd", mode="before")
    @classmethod
    def _decimal(cls, value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, bool | float):
            raise ValueError("max_cost_usd must be a decimal string such as '12.50', not a float")
        if isinstance(value, int | decimal.Decimal):
            value = str(value)
        if not isinstance(value, str) or not _DECIMAL.fullmatch(value):
            raise ValueError(f"max_cost_usd must be a non-negative decimal string, got {value!r}")
        # Normalised so that "10.50" and "10.5" are one policy (and "1E+2" never appears).
        normal = format(decimal.Decimal(value).normalize(), "f")
        return normal

    def canonical_bytes(self) -> bytes:
        """RFC 8785 bytes of the snapshot: what is hashed and stored."""
        return canonical_json(self.model_dump(mode="json"))

    @property
    def policy_hash(self) -> str:
        """SHA-256 of the canonical bytes, lowercase hex."""
        return hashlib.sha256(self.canonical_bytes()).hexdigest()

    def allows_tool(self, tool: str) -> bool:
        """True when `tool` is not denied and the allow-list (if any) names it."""
        if tool in self.tools_deny:
            return False
        return self.tools_allow is None or tool in self.tools_allow

    def allows_model(self, model: str) -> bool:
        """True when the model allow-list is absent or names `model`."""
        return self.models_allow is None or model in self.models_allow

    def redacts(self, field: str) -> bool:
        """True when `field` matches one of the redaction names or patterns."""
        return any(fnmatch.fnmatchcase(field, rule) for rule in self.redact_fields)
