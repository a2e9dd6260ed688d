"""`${ENV_VAR}` and `vault://secret/<id>` inside a server's `env` and `headers` values.

They are resolved only when connecting, and what they resolve to goes to the subprocess or
the HTTP request and nowhere else: an error names the server, the key and the variable or ref,
never a value.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from kernel.capability import CapabilityRef, SecretError, SecretResolver
from kernel.errors import LedgerflowError

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_VAULT = re.compile(r"vault://secret/[A-Za-z0-9_-]{1,128}")


class ValueResolutionError(LedgerflowError, LookupError):
    """A `${VAR}` that is not set, or a vault ref that cannot be resolved."""


def resolve_values(
    values: Mapping[str, str],
    where: str,
    environ: Mapping[str, str],
    vault: SecretResolver | None,
) -> tuple[dict[str, str], list[str]]:
    """`values` with every `${VAR}` and vault ref replaced, and the whole values that changed
    (the secrets to scrub from logs); `where` names them in errors ("server 'files' env")."""
    resolved = {
        key: _resolve(text, f"{where} {key}", environ, vault) for key, text in values.items()
    }
    return resolved, [resolved[key] for key in values if resolved[key] != values[key]]


def _resolve(
    text: str, where: str, environ: Mapping[str, str], vault: SecretResolver | None
) -> str:
    def env(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in environ:
            raise ValueResolutionError(f"{where}: environment variable {name} is not set")
        return environ[name]

    def secret(match: re.Match[str]) -> str:
        ref = CapabilityRef.parse(match.group(0))
        assert ref is not None  # the pattern is the ref syntax
        if vault is None:
            raise ValueResolutionError(
                f"{where}: {ref.uri} needs the vault of a ledger (give --db)"
            )
        try:
            value: Any = vault.resolve(ref)
        except SecretError as exc:
            raise ValueResolutionError(f"{where}: {exc}") from None
        return value if isinstance(value, str) else str(value)

    return _VAULT.sub(secret, _ENV.sub(env, text))


def scrub(text: str, secrets: list[str]) -> str:
    """`text` with each resolved value (longest first) replaced by a marker: a server that
    echoes its environment, or an error that quotes a header, must not put it in our log."""
    for value in sorted(secrets, key=len, reverse=True):
        if len(value) >= 4:  # shorter ones would blank out ordinary words
            text = text.replace(value, "[secret]")
    return text
