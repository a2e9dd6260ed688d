"""What each audience may see of a run's values: the LLM, the trace (and journal), a tool.

The VM applies these at the three boundaries itself:
- LLM: every value interpolated into a prompt. Secret refs become `[SECRET]`, erased refs
  `[REDACTED_TOMBSTONE]`, sensitive fields `[REDACTED]`, personal data a label (`[EMAIL]`...).
- journal / envelopes (written once, kept forever): secret refs become
  `{"$ref": uri, "commitment": hex}` (the salted commitment binds the value without revealing
  it; None once erased). Reversible, so a run can be rebuilt from its envelopes.
- trace views (what a reader is shown): the same, but erased refs show `[REDACTED_TOMBSTONE]`.
  The live state keeps the ref itself, so nothing is lost for later steps.
- tool: a tool that declared `@reads_secrets` receives resolved values; any other tool receives
  the refs. A secret a tool read is scrubbed from its output (replaced by the ref) before the
  output enters the state, so it cannot reach a trace or a later prompt.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from kernel.capability import TOMBSTONE, CapabilityRef, SecretError, SecretResolver
from kernel.redaction import REDACTED, RedactionRules

SECRET_PLACEHOLDER = "[SECRET]"
_EMBEDDED_REF = re.compile(r"vault://secret/[A-Za-z0-9_-]{1,128}")


class Projector:
    def __init__(
        self, resolver: SecretResolver | None = None, rules: RedactionRules | None = None
    ) -> None:
        self.resolver = resolver
        self.rules = rules if rules is not None else RedactionRules()

    def _tombstoned(self, ref: CapabilityRef) -> bool:
        return self.resolver is not None and self.resolver.is_tombstoned(ref)

    # --- LLM ---------------------------------------------------------------------------------

    def for_llm(self, value: Any, names: Iterable[str | int] = ()) -> Any:
        """`value` as a prompt may show it; `names` are the reference's root and path."""
        if self.rules.any_sensitive(names):
            return REDACTED
        return self.rules.redact(self._map_refs(value, self._llm_ref))

    def _llm_ref(self, ref: CapabilityRef) -> str:
        return TOMBSTONE if self._tombstoned(ref) else SECRET_PLACEHOLDER

    # --- journal, envelopes, trace views --------------------------------------------------

    def for_journal(self, value: Any) -> Any:
        """What is written to the journal and envelopes: refs with commitments, reversible."""
        return self._map_refs(value, self._journal_ref, embedded=lambda ref: ref.uri)

    def _journal_ref(self, ref: CapabilityRef) -> Any:
        proof = self.resolver.commitment(ref) if self.resolver is not None else None
        return {"$ref": ref.uri, "commitment": proof}

    def for_trace(self, value: Any) -> Any:
        """What a reader of a trace is shown: as `for_journal`, erased refs as tombstones."""
        return self._map_refs(
            self.restore_refs(value), self._trace_ref, embedded=self._trace_embedded
        )

    def _trace_ref(self, ref: CapabilityRef) -> Any:
        return TOMBSTONE if self._tombstoned(ref) else self._journal_ref(ref)

    def _trace_embedded(self, ref: CapabilityRef) -> str:
        return TOMBSTONE if self._tombstoned(ref) else ref.uri

    @staticmethod
    def restore_refs(value: Any) -> Any:
        """Undo `for_trace` on live refs: `{"$ref": uri, "commitment": c}` becomes the uri again
        (rebuilding a run's state from its journal). Tombstones stay tombstones."""
        if isinstance(value, dict):
            if value.keys() == {"$ref", "commitment"}:
                ref = CapabilityRef.parse(value["$ref"])
                if ref is not None:
                    return ref.uri
            return {k: Projector.restore_refs(v) for k, v in value.items()}
        if isinstance(value, list):
            return [Projector.restore_refs(v) for v in value]
        return value

    # --- tools -------------------------------------------------------------------------------

    def for_tool(self, value: Any) -> tuple[Any, dict[str, str]]:
        """Resolve every ref in `value` for a tool that reads secrets.

        Returns the resolved value and the secret texts revealed (text -> ref uri) for
        `scrub`. Raises SecretError for an unknown or erased ref: a tool never runs on data
        that is gone.
        """
        revealed: dict[str, str] = {}

        def resolve(ref: CapabilityRef) -> Any:
            if self.resolver is None:
                raise SecretError(f"no secret resolver configured to read {ref.uri}")
            secret = self.resolver.resolve(ref)
            if isinstance(secret, str) and secret:
                revealed[secret] = ref.uri
            return secret

        def embedded(ref: CapabilityRef) -> str:
            secret = resolve(ref)
            return secret if isinstance(secret, str) else str(secret)

        return self._map_refs(value, resolve, embedded=embedded), revealed

    def scrub(self, value: Any, revealed: dict[str, str]) -> Any:
        """Replace any revealed secret text in `value` with its ref (whole or inside a string)."""
        if not revealed:
            return value
        if isinstance(value, str):
            for secret, uri in revealed.items():
                if secret in value:
                    value = value.replace(secret, uri)
            return value
        if isinstance(value, dict):
            return {k: self.scrub(v, revealed) for k, v in value.items()}
        if isinstance(value, list):
            return [self.scrub(v, revealed) for v in value]
        return value

    # --- shared walk ---------------------------------------------------------------------------

    def _map_refs(self, value: Any, whole: Any, embedded: Any = None) -> Any:
        """Copy of `value` with each ref string replaced by whole(ref), and each ref inside a
        longer string by embedded(ref) (whole(ref) when that gives a string)."""
        if isinstance(value, str):
            if "vault://" not in value:
                return value
            ref = CapabilityRef.parse(value)
            if ref is not None:
                return whole(ref)
            swap = embedded if embedded is not None else whole
            return _EMBEDDED_REF.sub(lambda m: str(swap(CapabilityRef.parse(m.group()))), value)
        if isinstance(value, CapabilityRef):
            return whole(value)
        if isinstance(value, dict):
            return {k: self._map_refs(v, whole, embedded) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self._map_refs(v, whole, embedded) for v in value]
        return value
