"""Sealing secrets at intake: the plaintext of a marked value stops at the vault.

A context may mark a value as secret by writing, anywhere in it,

    {"$secret": VALUE, "subject": "SUBJECT-ID"}

with exactly these two keys and a non-empty string subject. `seal_context` stores each VALUE in
the vault under its subject and puts the ref URI (`vault://secret/<id>`) in its place.

Guarantees: the input is never mutated; a malformed marker raises IntakeError naming its path
(`context.customer.cards[1]`) before anything is stored, so a rejected context leaves no orphan
secrets; everything but markers is copied as is (mappings become dicts, lists stay lists,
tuples stay tuples).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from kernel.canonical import canonical_json
from kernel.capability import CapabilityRef
from kernel.errors import CanonicalizationError
from vault.errors import IntakeError

SECRET_KEY = "$secret"
SUBJECT_KEY = "subject"
ROOT = "context"


class SecretSink(Protocol):
    """Where sealed values go: the Vault (or InMemorySecretResolver in tests)."""

    def put(self, value: Any, subject: str) -> CapabilityRef: ...


def _child(path: str, key: object) -> str:
    if isinstance(key, str) and key.isidentifier():
        return f"{path}.{key}"
    return f"{path}[{key!r}]"


def _marker(node: Mapping[Any, Any], path: str) -> tuple[Any, str] | None:
    """(value, subject) if `node` is a secret marker, None if it is not one; IntakeError if it
    tries to be one and is malformed."""
    if SECRET_KEY not in node:
        return None
    extra = sorted(repr(k) for k in node if k not in (SECRET_KEY, SUBJECT_KEY))
    if extra:
        raise IntakeError(
            f'secret at {path}: a marker has exactly the keys "$secret" and "subject"; '
            f"unexpected {', '.join(extra)}",
            path=path,
        )
    if SUBJECT_KEY not in node:
        raise IntakeError(f'secret at {path}: "subject" (data subject id) is missing', path=path)
    subject = node[SUBJECT_KEY]
    if not isinstance(subject, str) or not subject.strip():
        got = "an empty string" if isinstance(subject, str) else f"a {type(subject).__name__}"
        raise IntakeError(
            f'secret at {path}: "subject" must be a non-empty string, got {got}', path=path
        )
    value = node[SECRET_KEY]
    try:
        canonical_json(value)
    except CanonicalizationError as exc:
        raise IntakeError(f"secret at {path}: value has no JSON form: {exc}", path=path) from None
    return value, subject


def _check(node: Any, path: str) -> None:
    if isinstance(node, Mapping):
        if _marker(node, path) is None:
            for key, item in node.items():
                _check(item, _child(path, key))
    elif isinstance(node, list | tuple):
        for index, item in enumerate(node):
            _check(item, f"{path}[{index}]")


def _seal(node: Any, path: str, sink: SecretSink) -> Any:
    if isinstance(node, Mapping):
        marker = _marker(node, path)
        if marker is not None:
            return sink.put(marker[0], marker[1]).uri
        return {key: _seal(item, _child(path, key), sink) for key, item in node.items()}
    if isinstance(node, list):
        return [_seal(item, f"{path}[{i}]", sink) for i, item in enumerate(node)]
    if isinstance(node, tuple):
        return tuple(_seal(item, f"{path}[{i}]", sink) for i, item in enumerate(node))
    return node


def seal_context(context: Mapping[str, Any], vault: SecretSink) -> dict[str, Any]:
    """A copy of `context` with every secret marker replaced by the ref URI of its sealed value.

    Validates the whole context first (IntakeError naming the path), then stores.
    """
    if not isinstance(context, Mapping):
        raise IntakeError(f"a context is a mapping, got {type(context).__name__}", path=ROOT)
    _check(context, ROOT)
    return {key: _seal(item, _child(ROOT, key), vault) for key, item in context.items()}
