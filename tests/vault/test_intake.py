"""seal_context: secret markers become refs; malformed markers are refused by path."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from kernel.capability import CapabilityRef, InMemorySecretResolver
from vault import IntakeError, Kek, Vault, VaultError, seal_context


def test_nested_secrets_are_replaced_by_refs(tmp_path: Path) -> None:
    context: dict[str, Any] = {
        "order": 42,
        "customer": {
            "name": "Ada",
            "card": {"$secret": "4111-1111-1111-1111-SECRET", "subject": "cust-1"},
            "history": [1, {"$secret": {"iban": "DE00-SECRET"}, "subject": "cust-1"}],
        },
        "pair": ({"$secret": 7, "subject": "cust-2"}, "plain"),
        "subject": "not a marker",
    }
    original = copy.deepcopy(context)
    with Vault.open(tmp_path / "keys.db", Kek.generate()) as vault:
        sealed = seal_context(context, vault)
        assert context == original  # input untouched
        card = CapabilityRef.parse(sealed["customer"]["card"])
        iban = CapabilityRef.parse(sealed["customer"]["history"][1])
        seven = CapabilityRef.parse(sealed["pair"][0])
        assert card is not None and iban is not None and seven is not None
        assert isinstance(sealed["customer"]["card"], str)
        assert vault.resolve(card) == "4111-1111-1111-1111-SECRET"
        assert vault.resolve(iban) == {"iban": "DE00-SECRET"}
        assert vault.resolve(seven) == 7
        assert set(vault.refs_of("cust-1")) == {card, iban}
        assert sealed["order"] == 42 and sealed["customer"]["name"] == "Ada"
        assert sealed["customer"]["history"][0] == 1
        assert isinstance(sealed["pair"], tuple) and sealed["pair"][1] == "plain"
        assert sealed["subject"] == "not a marker"
        assert "SECRET" not in repr(sealed)


def test_works_with_any_sink() -> None:
    resolver = InMemorySecretResolver()
    sealed = seal_context({"k": {"$secret": "v", "subject": "s"}}, resolver)
    ref = CapabilityRef.parse(sealed["k"])
    assert ref is not None and resolver.resolve(ref) == "v"


@pytest.mark.parametrize(
    ("context", "path", "message"),
    [
        ({"a": {"$secret": "x"}}, "context.a", "missing"),
        ({"a": {"b": [0, {"$secret": "x", "subject": ""}]}}, "context.a.b[1]", "empty string"),
        ({"a": {"$secret": "x", "subject": "   "}}, "context.a", "empty string"),
        ({"a": {"$secret": "x", "subject": 5}}, "context.a", "got a int"),
        ({"a": {"$secret": "x", "subject": None}}, "context.a", "got a NoneType"),
        ({"a": {"$secret": "x", "subject": "s", "note": 1}}, "context.a", "'note'"),
        ({"my key": [{"$secret": float("nan"), "subject": "s"}]}, "context['my key'][0]", "JSON"),
    ],
)
def test_malformed_markers_name_their_path(
    tmp_path: Path, context: dict[str, Any], path: str, message: str
) -> None:
    with Vault.open(tmp_path / "keys.db", Kek.generate()) as vault:
        good = {"$secret": "stored-first?", "subject": "s"}
        with pytest.raises(IntakeError, match=message) as info:
            seal_context({"early": good, **context}, vault)
        assert isinstance(info.value, VaultError)
        assert info.value.path == path
        assert path in str(info.value)
        # Validation precedes storage: the well-formed marker before the bad one left nothing.
        assert vault.refs_of("s") == []


def test_context_must_be_a_mapping() -> None:
    with pytest.raises(IntakeError, match="mapping"):
        seal_context([1], InMemorySecretResolver())  # type: ignore[arg-type]
