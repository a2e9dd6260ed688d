"""Bearer tokens: issue, store as hash, authenticate, revoke, scopes, header and query parsing."""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.application.principal import Principal, Scope
from gateway.http.tokens import (
    TOKEN_LENGTH,
    TOKEN_PREFIX,
    AuthError,
    ScopeError,
    TokenError,
    TokenStore,
    bearer_from_headers,
    reject_query_token,
    require,
)
from governance.errors import LedgerError
from governance.runs import RunStore
from kernel import ManualClock


@pytest.fixture
async def store(tmp_path: Path, clock: ManualClock) -> AsyncIterator[TokenStore]:
    async with TokenStore.in_file(tmp_path / "ledger.db", clock=clock) as tokens:
        yield tokens


async def test_token_is_returned_once_and_stored_only_as_its_hash(
    store: TokenStore, tmp_path: Path
) -> None:
    token, info = await store.create("ci", [Scope.RUN, "read"])
    assert token.startswith(TOKEN_PREFIX) and len(token) == TOKEN_LENGTH
    assert info.name == "ci" and info.scopes == {Scope.RUN, Scope.READ}
    assert token not in repr(info)

    with sqlite3.connect(tmp_path / "ledger.db") as db:
        rows = db.execute("SELECT * FROM lf_tokens").fetchall()
    assert len(rows) == 1
    assert all(token not in str(value) for value in rows[0])
    assert hashlib.sha256(token.encode()).hexdigest() in rows[0]


async def test_valid_token_authenticates_as_its_principal(store: TokenStore) -> None:
    token, _ = await store.create("auditor", [Scope.AUDIT])
    principal = await store.authenticate(token)
    assert principal == Principal("auditor", frozenset({Scope.AUDIT}))


@pytest.mark.parametrize("text", [None, ""])
async def test_missing_token(store: TokenStore, text: str | None) -> None:
    with pytest.raises(AuthError, match="authentication required") as caught:
        await store.authenticate(text)
    assert caught.value.reason == "missing"


async def test_wrong_token_is_invalid_and_not_echoed(store: TokenStore) -> None:
    token, _ = await store.create("ci", [Scope.RUN])
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    for wrong in (forged, "not-a-token", token + "x", TOKEN_PREFIX + "x" * 43):
        with pytest.raises(AuthError, match="invalid token") as caught:
            await store.authenticate(wrong)
        assert caught.value.reason == "invalid"
        assert wrong not in str(caught.value) and token not in str(caught.value)


async def test_token_expires_on_the_clock(store: TokenStore, clock: ManualClock) -> None:
    token, info = await store.create("temp", [Scope.READ], expires_in_seconds=60)
    assert info.expires_at == clock.now() + 60
    clock.advance(59.5)
    assert (await store.authenticate(token)).name == "temp"
    clock.advance(0.5)
    with pytest.raises(AuthError, match="token 'temp' has expired") as caught:
        await store.authenticate(token)
    assert caught.value.reason == "expired"
    assert token not in str(caught.value)


@pytest.mark.parametrize("by", ["name", "id"])
async def test_revoked_token_is_refused(store: TokenStore, by: str) -> None:
    token, info = await store.create("bot", [Scope.RUN])
    revoked = await store.revoke(info.name if by == "name" else info.id)
    assert revoked.id == info.id and revoked.revoked_at is not None
    with pytest.raises(AuthError, match="token 'bot' has been revoked") as caught:
        await store.authenticate(token)
    assert caught.value.reason == "revoked"
    assert await store.revoke(info.id) == revoked  # twice: no-op


async def test_revoked_wins_over_expired(store: TokenStore, clock: ManualClock) -> None:
    token, _ = await store.create("bot", [Scope.RUN], expires_in_seconds=10)
    await store.revoke("bot")
    clock.advance(11)
    with pytest.raises(AuthError) as caught:
        await store.authenticate(token)
    assert caught.value.reason == "revoked"


async def test_one_live_token_per_name_and_names_are_reusable_after_revoke(
    store: TokenStore,
) -> None:
    old, _ = await store.create("bot", [Scope.RUN])
    with pytest.raises(TokenError, match="a live token named 'bot' exists"):
        await store.create("bot", [Scope.READ])
    await store.revoke("bot")
    new, info = await store.create("bot", [Scope.READ])
    assert (await store.authenticate(new)).scopes == {Scope.READ}
    assert (await store.revoke("bot")).id == info.id  # the live one
    assert [t.status(0) for t in await store.list()] == ["revoked", "revoked"]
    with pytest.raises(AuthError):
        await store.authenticate(old)


async def test_list_shows_status_without_secrets(store: TokenStore, clock: ManualClock) -> None:
    await store.create("a", [Scope.READ])
    await store.create("b", [Scope.AUDIT], expires_in_seconds=5)
    await store.create("c", [Scope.ADMIN])
    await store.revoke("c")
    clock.advance(5)
    listed = await store.list()
    assert [(t.name, t.status(clock.now())) for t in listed] == [
        ("a", "active"),
        ("b", "expired"),
        ("c", "revoked"),
    ]


@pytest.mark.parametrize(
    ("name", "scopes", "expires", "message"),
    [
        ("ci", ["write"], None, "unknown scope 'write': valid scopes are run, read, audit, admin"),
        ("ci", [], None, "at least one scope"),
        ("bad name", ["read"], None, "token name 'bad name'"),
        ("tok_1", ["read"], None, "not 'tok_'"),
        ("ci", ["read"], 0, "expires_in_seconds must be positive"),
        ("ci", ["read"], -5, "expires_in_seconds must be positive"),
    ],
)
async def test_create_refuses_bad_input(
    store: TokenStore, name: str, scopes: list[str], expires: float | None, message: str
) -> None:
    with pytest.raises(TokenError, match=message):
        await store.create(name, scopes, expires_in_seconds=expires)


async def test_revoke_unknown_token(store: TokenStore) -> None:
    with pytest.raises(TokenError, match="no token with name or id 'ghost'"):
        await store.revoke("ghost")


async def test_tokens_persist_beside_the_run_index(tmp_path: Path, clock: ManualClock) -> None:
    path = tmp_path / "ledger.db"
    runs = RunStore.in_file(path)
    await runs.open()
    try:
        async with TokenStore.in_file(path, clock=clock) as tokens:
            token, _ = await tokens.create("ci", [Scope.RUN])
        async with TokenStore.in_file(path, clock=clock) as tokens:
            assert (await tokens.authenticate(token)).name == "ci"
    finally:
        await runs.close()


async def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    async with TokenStore.in_file(path):
        pass
    with sqlite3.connect(path) as db:
        db.execute("INSERT INTO lf_tokens_schema VALUES (99)")
    with pytest.raises(LedgerError, match="token tables are version 99"):
        await TokenStore.in_file(path).open()


async def test_closed_store_refuses_use(tmp_path: Path) -> None:
    with pytest.raises(LedgerError, match="not open"):
        await TokenStore.in_file(tmp_path / "x.db").list()


# --- scopes ---------------------------------------------------------------------------------


def test_require_names_the_missing_scope() -> None:
    reader = Principal("reader", frozenset({Scope.READ}))
    require(reader, "get_trace")
    with pytest.raises(ScopeError, match="'reader' may not call 'get_proof'") as caught:
        require(reader, "get_proof")
    assert caught.value.scope is Scope.AUDIT
    assert "'audit' scope" in str(caught.value)


def test_require_refuses_a_tool_without_a_scope() -> None:
    with pytest.raises(ScopeError, match="tool 'mystery' has no scope assigned"):
        require(Principal.local_operator(), "mystery")


def test_every_scope_is_enforced() -> None:
    admin_only = Principal("admin", frozenset({Scope.ADMIN}))
    require(admin_only, "erase_subject")
    for tool in ("run_program", "get_trace", "verify_ledger"):
        with pytest.raises(ScopeError):
            require(admin_only, tool)


# --- headers and the query string -------------------------------------------------------------


def test_bearer_from_headers() -> None:
    assert bearer_from_headers({}) is None
    assert bearer_from_headers({"Authorization": "Bearer lf_abc"}) == "lf_abc"
    assert bearer_from_headers({"authorization": "bearer   lf_abc "}) == "lf_abc"
    for bad in ("Basic dXNlcjpwYXNz", "Bearer", "Bearer a b", "lf_abc"):
        with pytest.raises(AuthError, match="must be 'Bearer <token>'"):
            bearer_from_headers({"Authorization": bad})


@pytest.mark.parametrize(
    "params",
    [
        {"access_token": "anything"},
        {"Token": "x"},
        {"q": TOKEN_PREFIX + "A" * 43},
        [("page", "2"), ("key", TOKEN_PREFIX + "secret")],
    ],
)
def test_query_string_tokens_are_refused(params: dict[str, str] | list[tuple[str, str]]) -> None:
    message = "tokens in the query string are refused: use the Authorization header"
    with pytest.raises(AuthError, match=message):
        reject_query_token(params)
    # ... even beside a valid header: the URL has leaked it into logs already.
    with pytest.raises(AuthError, match=message):
        bearer_from_headers({"Authorization": "Bearer lf_abc"}, params)


def test_query_without_tokens_passes() -> None:
    reject_query_token({"page": "2", "status": "SUSPENDED"})
    assert bearer_from_headers({"Authorization": "Bearer lf_x"}, {"page": "2"}) == "lf_x"


def test_every_value_of_a_repeated_parameter_is_checked() -> None:
    class MultiParams(dict[str, str]):
        """Like starlette's QueryParams: the mapping shows the last value only."""

        def multi_items(self) -> list[tuple[str, str]]:
            return [("q", TOKEN_PREFIX + "hidden"), ("q", "plain")]

    with pytest.raises(AuthError):
        reject_query_token(MultiParams(q="plain"))


async def test_a_tokens_tool_allow_list_rides_in_its_principal(store: TokenStore) -> None:
    token, info = await store.create("agent", ["tools"], tools=["files.read_*", "github.*"])
    assert info.tools == ("files.read_*", "github.*")
    principal = await store.authenticate(token)
    assert principal.tools == ("files.read_*", "github.*")
    assert principal.may_call("files.read_note") and principal.may_call("github.list_issues")
    assert not principal.may_call("files.write_note")
    anyone, _ = await store.create("any", ["tools"])
    assert (await store.authenticate(anyone)).may_call("files.write_note")
    listed = {i.name: i.tools for i in await store.list()}
    assert listed == {"agent": ("files.read_*", "github.*"), "any": None}


@pytest.mark.parametrize("patterns", [["read_note"], ["files.read note"], [" "]])
async def test_a_tool_pattern_must_name_server_and_tool(
    store: TokenStore, patterns: list[str]
) -> None:
    with pytest.raises(TokenError, match=r"SERVER\.TOOL"):
        await store.create("agent", ["tools"], tools=patterns)
    assert await store.list() == []
