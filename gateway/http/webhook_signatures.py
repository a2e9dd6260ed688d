"""Webhook signatures: HMAC-SHA256 over `timestamp + "." + body`, sent as `t=<unix>,v1=<hex>`.

Guarantees of `verify`:
- it returns only if some `v1=` value is the HMAC of exactly these bytes and this timestamp
  under one of the secrets given (several values in the header, or several secrets, let a
  secret be rotated without dropping deliveries);
- it refuses a timestamp more than `tolerance` seconds from `now`, in either direction, so a
  captured delivery cannot be replayed later (within the window, dedupe by event id);
- signatures are compared with `hmac.compare_digest`, so timing reveals nothing about them;
- every refusal is a WebhookSignatureError whose `reason` is `malformed`, `timestamp` or
  `signature`; messages never contain a secret or an expected signature.

Verify the raw request bytes as received: re-serialised JSON would not match.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Sequence
from typing import Literal

from kernel.errors import LedgerflowError

SCHEME = "v1"
DEFAULT_TOLERANCE_SECONDS = 300
MAX_HEADER_LENGTH = 4096
MAX_SIGNATURES = 8  # bounds the work an attacker can ask of one request

_HEX_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
_UNIX = re.compile(r"[0-9]{1,12}")

Secret = str | bytes
Secrets = Secret | Sequence[Secret]
SignatureReason = Literal["malformed", "timestamp", "signature"]


class WebhookSignatureError(LedgerflowError, ValueError):
    """A webhook delivery whose signature header does not prove it came from the sender."""

    def __init__(self, message: str, reason: SignatureReason) -> None:
        super().__init__(message)
        self.reason: SignatureReason = reason


def _keys(secret: Secrets) -> list[bytes]:
    items = [secret] if isinstance(secret, str | bytes) else list(secret)
    keys = [s.encode("utf-8") if isinstance(s, str) else s for s in items]
    # An empty key makes every signature computable by anyone: a configuration error.
    if not keys or any(not key for key in keys):
        raise ValueError("webhook secret is empty")
    return keys


def _mac(key: bytes, timestamp: int, body: bytes) -> str:
    return hmac.new(key, b"%d." % timestamp + body, hashlib.sha256).hexdigest()


def _bytes(body: bytes | str) -> bytes:
    return body.encode("utf-8") if isinstance(body, str) else body


def sign(secret: Secrets, body: bytes | str, timestamp: float) -> str:
    """The signature header for `body` sent at `timestamp` (unix seconds, truncated).

    Several secrets give several `v1=` values: the sender's side of a rotation.
    """
    t = int(timestamp)
    signatures = ",".join(f"{SCHEME}={_mac(key, t, _bytes(body))}" for key in _keys(secret))
    return f"t={t},{signatures}"


def parse_header(header: str | None) -> tuple[int, list[str]]:
    """The timestamp and the `v1` signatures (lowercase hex) of a header; other schemes are
    ignored so that a sender may add one."""
    if not header:
        raise WebhookSignatureError("missing signature header", "malformed")
    if len(header) > MAX_HEADER_LENGTH:
        raise WebhookSignatureError("malformed signature header: too long", "malformed")
    timestamp: int | None = None
    signatures: list[str] = []
    for item in header.split(","):
        key, sep, value = item.strip().partition("=")
        if not sep:
            raise WebhookSignatureError(
                "malformed signature header: expected 't=<unix>,v1=<hex>'", "malformed"
            )
        if key == "t":
            if timestamp is not None or not _UNIX.fullmatch(value):
                raise WebhookSignatureError(
                    "malformed signature header: 't' must appear once, as unix seconds",
                    "malformed",
                )
            timestamp = int(value)
        elif key == SCHEME:
            if not _HEX_SHA256.fullmatch(value):
                raise WebhookSignatureError(
                    f"malformed signature header: '{SCHEME}' must be 64 hex digits", "malformed"
                )
            signatures.append(value.lower())
    if timestamp is None:
        raise WebhookSignatureError("malformed signature header: no 't=' timestamp", "malformed")
    if not signatures:
        raise WebhookSignatureError(
            f"malformed signature header: no '{SCHEME}=' signature", "malformed"
        )
    if len(signatures) > MAX_SIGNATURES:
        raise WebhookSignatureError(
            f"malformed signature header: more than {MAX_SIGNATURES} signatures", "malformed"
        )
    return timestamp, signatures


def verify(
    secret: Secrets,
    header: str | None,
    body: bytes | str,
    now: float,
    tolerance: float = DEFAULT_TOLERANCE_SECONDS,
) -> None:
    """Return if the header signs `body`; else raise WebhookSignatureError (see module doc).

    `secret` may be several secrets (the receiver's side of a rotation). A timestamp exactly
    `tolerance` seconds away is accepted.
    """
    keys = _keys(secret)
    timestamp, signatures = parse_header(header)
    # Checked first: it is cheap, and a stale delivery is refused whatever it carries.
    if abs(now - timestamp) > tolerance:
        raise WebhookSignatureError(
            f"signature timestamp {timestamp} is outside the {tolerance:g}s tolerance "
            f"(now {int(now)})",
            "timestamp",
        )
    data = _bytes(body)
    matched = False
    for key in keys:
        expected = _mac(key, timestamp, data)
        for candidate in signatures:
            # No early exit: every pair is compared, so the time taken does not depend on
            # which signature (if any) matched.
            matched |= hmac.compare_digest(expected, candidate)
    if not matched:
        raise WebhookSignatureError("bad signature: no v1 signature matches the body", "signature")
