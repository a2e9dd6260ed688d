"""Console sign-in: a token with the `audit` scope, exchanged for a session cookie.

The cookie holds a random session id (never the token): HttpOnly, SameSite=Strict, Secure over
TLS, path /audit/. The token stays in this process's memory and is authenticated again on each
page, so a revoked or expired token ends its sessions at once; a session also ends after
SESSION_SECONDS or at sign-out.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass

from gateway.application.principal import Principal, Scope
from gateway.http.tokens import AuthError, TokenStore

COOKIE = "lf_audit_session"
SESSION_SECONDS = 8 * 3600


class SignInError(Exception):
    """The token given cannot open the console; the message says why."""


@dataclass
class _Session:
    token: str
    expires: float


class Sessions:
    def __init__(self, tokens: TokenStore | None) -> None:
        self._tokens = tokens  # None: no authentication (loopback only)
        self._sessions: dict[str, _Session] = {}

    @property
    def required(self) -> bool:
        return self._tokens is not None

    async def sign_in(self, token: str) -> str:
        principal = await self._authenticate(token)
        if not principal.allows(Scope.AUDIT):
            raise SignInError(f"token '{principal.name}' lacks the 'audit' scope the console needs")
        session = secrets.token_urlsafe(32)
        self._sessions[session] = _Session(token, time.monotonic() + SESSION_SECONDS)
        return session

    async def principal(self, session: str | None) -> Principal | None:
        if self._tokens is None:
            return Principal.local_operator(frozenset({Scope.AUDIT, Scope.READ}))
        found = self._sessions.get(session or "")
        if found is None or found.expires < time.monotonic():
            self._sessions.pop(session or "", None)
            return None
        try:
            principal = await self._authenticate(found.token)
        except SignInError:
            self._sessions.pop(session or "", None)
            return None
        return principal if principal.allows(Scope.AUDIT) else None

    def sign_out(self, session: str | None) -> None:
        self._sessions.pop(session or "", None)

    async def _authenticate(self, token: str) -> Principal:
        assert self._tokens is not None
        try:
            return await self._tokens.authenticate(token.strip())
        except AuthError as exc:
            raise SignInError(str(exc)) from None
