"""Bearer tokens for the HTTP gateway: issued once, stored only as a hash, checked per call.

Guarantees:
- A token is `lf_` + 43 urlsafe characters (256 random bits). Its text is returned by `create`
  exactly once and never stored, logged or put in an error message; the table holds its SHA-256.
- `authenticate` returns the token's `Principal` or raises `AuthError` saying why (missing,
  invalid, expired, revoked); `require` raises `ScopeError` naming the scope a tool needs.
- A token in a URL's query string is refused, even beside a valid header: URLs end up in proxy
  and access logs, so such a token must be treated as leaked.

The table `lf_tokens` lives in the ledger's database file, through a connection of its own, like
the run index (governance.runs): tokens are operational state, not evidence.
"""

from __future__ import annotations

import builtins
import dataclasses
import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from gateway.application.principal import TOOL_SCOPES, Principal, Scope
from governance.storage.database import ConstraintError, Database
from governance.storage.operational_tables import OperationalTables
from kernel.clock import Clock, SystemClock
from kernel.errors import LedgerflowError

TOKEN_PREFIX = "lf_"
TOKEN_BYTES = 32  # 256 bits -> 43 urlsafe base64 characters
TOKEN_LENGTH = len(TOKEN_PREFIX) + 43
ID_PREFIX = "tok_"
# RFC 6750 names the query parameter `access_token`; the others are common guesses.
QUERY_TOKEN_PARAMS = frozenset({"access_token", "token", "api_key", "apikey", "auth", "bearer"})

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")
_TOKEN = re.compile(re.escape(TOKEN_PREFIX) + r"[A-Za-z0-9_-]{43}")

_V1 = (
    """CREATE TABLE IF NOT EXISTS lf_tokens (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        token_hash TEXT NOT NULL UNIQUE,
        scopes TEXT NOT NULL,
        created_at REAL NOT NULL,
        expires_at REAL,
        revoked_at REAL
    ) STRICT""",
    # One live token per name, so `revoke(name)` means exactly one token; a revoked token's name
    # may be reused.
    "CREATE UNIQUE INDEX IF NOT EXISTS lf_tokens_live_name ON lf_tokens(name) "
    "WHERE revoked_at IS NULL",
)
# Creation order, for listings (times may tie); tokens made before it count as 0.
_V2 = ("ALTER TABLE lf_tokens ADD COLUMN ordinal INTEGER NOT NULL DEFAULT 0",)
# The downstream tools the token may call through the gateway: a JSON list of SERVER.TOOL glob
# patterns, NULL for any (tokens made before it: any, as far as their scopes allow).
_V3 = ("ALTER TABLE lf_tokens ADD COLUMN tools TEXT",)
_COLUMNS = "id, name, scopes, created_at, expires_at, revoked_at, tools"
# A pattern names SERVER.TOOL: letters, digits, _ . - and the glob characters * ? [ ] !
_TOOL_PATTERN = re.compile(r"[A-Za-z0-9_.*?\[\]!-]{1,128}")

AuthReason = Literal["missing", "invalid", "expired", "revoked"]


class AuthError(LedgerflowError):
    """No valid credentials (HTTP 401). `reason` is one of missing, invalid, expired, revoked."""

    def __init__(self, message: str, reason: AuthReason = "invalid") -> None:
        super().__init__(message)
        self.reason: AuthReason = reason


class ScopeError(LedgerflowError):
    """Valid credentials without the scope a tool needs (HTTP 403)."""

    def __init__(self, message: str, scope: Scope | None = None) -> None:
        super().__init__(message)
        self.scope = scope


class TokenError(LedgerflowError, ValueError):
    """A token cannot be created or revoked as asked (bad name or scope, unknown token)."""


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """What is known about a token; never its text nor its hash."""

    id: str
    name: str
    scopes: frozenset[Scope]
    created_at: float
    expires_at: float | None
    revoked_at: float | None
    tools: tuple[str, ...] | None = None

    def status(self, now: float) -> Literal["active", "expired", "revoked"]:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and now >= self.expires_at:
            return "expired"
        return "active"


def hash_token(token_text: str) -> str:
    """SHA-256 of the token text, lowercase hex.

    A plain hash is enough: the token is 256 random bits, so no guessing or precomputation
    attack exists for a slow KDF (bcrypt, argon2) to slow down; those protect low-entropy
    passwords. A fast hash also keeps `authenticate` cheap on every request.
    """
    return hashlib.sha256(token_text.encode("utf-8")).hexdigest()


def parse_scopes(scopes: Iterable[Scope | str]) -> frozenset[Scope]:
    """The scopes named, validated; at least one is required."""
    parsed: set[Scope] = set()
    for scope in scopes:
        try:
            parsed.add(Scope(scope))
        except ValueError:
            valid = ", ".join(s.value for s in Scope)
            raise TokenError(f"unknown scope '{scope}': valid scopes are {valid}") from None
    if not parsed:
        raise TokenError("a token needs at least one scope")
    return frozenset(parsed)


def parse_tool_patterns(patterns: Iterable[str] | None) -> tuple[str, ...] | None:
    """The token's tool allow-list (SERVER.TOOL globs), validated; None allows any tool."""
    if patterns is None:
        return None
    parsed = tuple(dict.fromkeys(p.strip() for p in patterns if p.strip()))
    for pattern in parsed:
        if not _TOOL_PATTERN.fullmatch(pattern) or "." not in pattern:
            raise TokenError(
                f"tool pattern {pattern!r} must name SERVER.TOOL (globs allowed, such as "
                "'files.read_*' or 'github.*')"
            )
    if not parsed:
        raise TokenError("a tool allow-list needs at least one SERVER.TOOL pattern")
    return parsed


class TokenStore(OperationalTables):
    """Bearer tokens in `lf_tokens`. Open with `await store.open()` or `async with`."""

    MIGRATIONS = ((1, _V1), (2, _V2), (3, _V3))
    VERSION_TABLE = "lf_tokens_schema"
    TABLES = ("lf_tokens",)
    WHAT = "token tables"

    def __init__(
        self,
        db: Database,
        *,
        clock: Clock | None = None,
    ) -> None:
        super().__init__(db)
        self.clock: Clock = clock if clock is not None else SystemClock()

    async def create(
        self,
        name: str,
        scopes: Iterable[Scope | str],
        expires_in_seconds: float | None = None,
        tools: Iterable[str] | None = None,
    ) -> tuple[str, TokenInfo]:
        """A new token: its text (show it once, it cannot be recovered) and its info. `tools`:
        the downstream tools (SERVER.TOOL globs) it may call through the gateway, None: any."""
        if not _NAME.fullmatch(name) or name.startswith(ID_PREFIX):
            raise TokenError(
                f"token name {name!r} must be 1-64 characters of letters, digits and _.@- "
                f"(starting with a letter or digit, not '{ID_PREFIX}')"
            )
        granted = parse_scopes(scopes)
        allowed_tools = parse_tool_patterns(tools)
        if expires_in_seconds is not None and not expires_in_seconds > 0:
            raise TokenError(f"expires_in_seconds must be positive, got {expires_in_seconds}")
        now = self.clock.now()
        info = TokenInfo(
            id=ID_PREFIX + secrets.token_hex(8),
            name=name,
            scopes=granted,
            created_at=now,
            expires_at=None if expires_in_seconds is None else now + expires_in_seconds,
            revoked_at=None,
            tools=allowed_tools,
        )
        token_text = TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)
        try:
            await self.db.execute(
                "INSERT INTO lf_tokens (id, name, token_hash, scopes, created_at, expires_at, "
                "tools, ordinal) SELECT ?, ?, ?, ?, ?, ?, ?, coalesce(max(ordinal), 0) + 1 "
                "FROM lf_tokens",
                (
                    info.id,
                    name,
                    hash_token(token_text),
                    json.dumps(sorted(s.value for s in granted)),
                    info.created_at,
                    info.expires_at,
                    None if allowed_tools is None else json.dumps(list(allowed_tools)),
                ),
            )
        except ConstraintError:
            raise TokenError(
                f"a live token named '{name}' exists; revoke it first or choose another name"
            ) from None
        return token_text, info

    async def list(self) -> builtins.list[TokenInfo]:
        """Every token, revoked and expired ones included, oldest first."""
        rows = await self.db.fetch(
            f"SELECT {_COLUMNS} FROM lf_tokens ORDER BY created_at, ordinal, id"
        )
        return [_info(row) for row in rows]

    async def revoke(self, name_or_id: str) -> TokenInfo:
        """Revoke a token by id, or the live token of that name. Revoking twice is a no-op."""
        info = await self._find(name_or_id)
        if info.revoked_at is not None:
            return info
        now = self.clock.now()
        await self.db.execute(
            "UPDATE lf_tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
            (now, info.id),
        )
        return dataclasses.replace(info, revoked_at=now)

    async def authenticate(self, token_text: str | None) -> Principal:
        """The principal of a live token, else AuthError (the message never repeats the token)."""
        if not token_text:
            raise AuthError(
                "authentication required: send 'Authorization: Bearer <token>'", "missing"
            )
        if not _TOKEN.fullmatch(token_text):
            raise AuthError("invalid token: not a ledgerflow token", "invalid")
        digest = hash_token(token_text)
        row = await self.db.lookup(
            f"SELECT {_COLUMNS}, token_hash FROM lf_tokens WHERE token_hash = ?", (digest,)
        )
        # The index lookup is keyed by a hash the caller cannot choose; comparing in constant
        # time as well costs nothing and does not rely on that argument.
        if row is None or not hmac.compare_digest(str(row[7]), digest):
            raise AuthError("invalid token: unknown token", "invalid")
        info = _info(row)
        status = info.status(self.clock.now())
        if status == "revoked":
            raise AuthError(f"token '{info.name}' has been revoked", "revoked")
        if status == "expired":
            raise AuthError(f"token '{info.name}' has expired", "expired")
        return Principal(info.name, info.scopes, info.tools)

    async def _find(self, name_or_id: str) -> TokenInfo:
        if name_or_id.startswith(ID_PREFIX):
            query, params = f"SELECT {_COLUMNS} FROM lf_tokens WHERE id = ?", (name_or_id,)
        else:
            # The live token of that name, else the most recently revoked one.
            query = (
                f"SELECT {_COLUMNS} FROM lf_tokens WHERE name = ? "
                "ORDER BY revoked_at IS NOT NULL, revoked_at DESC LIMIT 1"
            )
            params = (name_or_id,)
        row = await self.db.fetchone(query, params)
        if row is None:
            raise TokenError(f"no token with name or id '{name_or_id}'")
        return _info(row)


def _info(row: Any) -> TokenInfo:
    scopes = frozenset(Scope(s) for s in json.loads(row[2]))
    tools = None if row[6] is None else tuple(json.loads(row[6]))
    return TokenInfo(row[0], row[1], scopes, row[3], row[4], row[5], tools)


def require(
    principal: Principal, tool_name: str, scopes: Mapping[str, Scope] = TOOL_SCOPES
) -> None:
    """Raise ScopeError unless `principal` holds the scope `tool_name` needs.

    A tool with no scope assigned is refused: a new tool is closed until someone decides who
    may call it.
    """
    needed = scopes.get(tool_name)
    if needed is None:
        raise ScopeError(f"tool '{tool_name}' has no scope assigned; refused")
    if not principal.allows(needed):
        raise ScopeError(
            f"'{principal.name}' may not call '{tool_name}': it needs the '{needed.value}' scope",
            needed,
        )


def reject_query_token(query_params: Mapping[str, str] | Iterable[tuple[str, str]]) -> None:
    """Raise AuthError if the query string carries a token (by parameter name or by value)."""
    pairs = query_params.items() if isinstance(query_params, Mapping) else query_params
    multi = getattr(query_params, "multi_items", None)  # starlette's QueryParams: every value
    if callable(multi):
        pairs = multi()
    for key, value in pairs:
        if key.lower() in QUERY_TOKEN_PARAMS or str(value).startswith(TOKEN_PREFIX):
            raise AuthError(
                "tokens in the query string are refused: use the Authorization header", "invalid"
            )


def bearer_from_headers(
    headers: Mapping[str, str],
    query_params: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
) -> str | None:
    """The bearer token of the Authorization header, or None if there is no such header.

    Raises AuthError for a header of another scheme or shape, and for a token in the query
    string (`query_params`), which is refused even when the header is valid.
    """
    if query_params is not None:
        reject_query_token(query_params)
    value = headers.get("authorization")
    if value is None:  # plain dicts are case-sensitive; starlette's Headers are not
        value = next((v for k, v in headers.items() if k.lower() == "authorization"), None)
    if value is None:
        return None
    scheme, _, credentials = value.strip().partition(" ")
    credentials = credentials.strip()
    if scheme.lower() != "bearer" or not credentials or " " in credentials:
        raise AuthError("the Authorization header must be 'Bearer <token>'", "invalid")
    return credentials
