"""Webhook signatures: format, tolerance edges, tampering, rotation, malformed headers."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from gateway.http.webhook_signatures import WebhookSignatureError, parse_header, sign, verify

SECRET = "whsec_test_secret"
BODY = b'{"event_id": "evt_1", "status": "paid"}'
T = 1_700_000_000


def test_sign_format_and_value() -> None:
    header = sign(SECRET, BODY, T)
    expected = hmac.new(SECRET.encode(), f"{T}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert header == f"t={T},v1={expected}"
    assert sign(SECRET, BODY, T + 0.9) == header  # whole seconds
    assert sign(SECRET, BODY.decode(), T) == header  # str bodies are UTF-8


def test_verify_accepts_a_fresh_signature() -> None:
    verify(SECRET, sign(SECRET, BODY, T), BODY, now=T)
    verify(SECRET.encode(), sign(SECRET, BODY, T), BODY, now=T + 10.5)


@pytest.mark.parametrize("offset", [-300, 300, -299.5, 299.9])
def test_tolerance_edges_are_inclusive(offset: float) -> None:
    verify(SECRET, sign(SECRET, BODY, T), BODY, now=T + offset)


@pytest.mark.parametrize("offset", [-301, 301, 300.5, 86_400])
def test_outside_tolerance_is_refused(offset: float) -> None:
    with pytest.raises(WebhookSignatureError, match="outside the 300s tolerance") as caught:
        verify(SECRET, sign(SECRET, BODY, T), BODY, now=T + offset)
    assert caught.value.reason == "timestamp"


def test_custom_tolerance() -> None:
    header = sign(SECRET, BODY, T)
    verify(SECRET, header, BODY, now=T + 5, tolerance=5)
    with pytest.raises(WebhookSignatureError, match="5s tolerance"):
        verify(SECRET, header, BODY, now=T + 6, tolerance=5)


@pytest.mark.parametrize(
    "body",
    [BODY.replace(b"paid", b"PAID"), BODY + b" ", BODY[:-1], b""],
)
def test_tampered_body_is_refused(body: bytes) -> None:
    with pytest.raises(WebhookSignatureError, match="bad signature") as caught:
        verify(SECRET, sign(SECRET, BODY, T), body, now=T)
    assert caught.value.reason == "signature"


def test_tampered_timestamp_and_wrong_secret_are_refused() -> None:
    signature = sign(SECRET, BODY, T).split(",")[1]
    with pytest.raises(WebhookSignatureError, match="bad signature"):
        verify(SECRET, f"t={T + 1},{signature}", BODY, now=T)
    with pytest.raises(WebhookSignatureError, match="bad signature"):
        verify("other", sign(SECRET, BODY, T), BODY, now=T)


def test_error_never_shows_the_expected_signature() -> None:
    expected = sign(SECRET, BODY, T).split("v1=")[1]
    with pytest.raises(WebhookSignatureError) as caught:
        verify(SECRET, f"t={T},v1={'0' * 64}", BODY, now=T)
    assert expected not in str(caught.value) and SECRET not in str(caught.value)


def test_rotation_several_signatures_in_the_header() -> None:
    # The sender signs with the old and the new secret while receivers move over.
    header = sign(["old-secret", "new-secret"], BODY, T)
    assert header.count("v1=") == 2
    verify("old-secret", header, BODY, now=T)
    verify("new-secret", header, BODY, now=T)
    with pytest.raises(WebhookSignatureError, match="bad signature"):
        verify("unrelated", header, BODY, now=T)


def test_rotation_several_secrets_at_the_receiver() -> None:
    verify(["new-secret", "old-secret"], sign("old-secret", BODY, T), BODY, now=T)
    with pytest.raises(WebhookSignatureError, match="bad signature"):
        verify(["new-secret", "newer"], sign("old-secret", BODY, T), BODY, now=T)


def test_unknown_schemes_are_ignored_and_hex_case_does_not_matter() -> None:
    header = sign(SECRET, BODY, T)
    t, v1 = header.split(",")
    verify(SECRET, f"{t}, v0=abc ,{v1.upper().replace('V1=', 'v1=')}", BODY, now=T)


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (None, "missing signature header"),
        ("", "missing signature header"),
        ("garbage", "expected 't=<unix>,v1=<hex>'"),
        (f"v1={'a' * 64}", "no 't=' timestamp"),
        (f"t={T}", "no 'v1=' signature"),
        (f"t={T},v0={'a' * 64}", "no 'v1=' signature"),
        (f"t=abc,v1={'a' * 64}", "'t' must appear once, as unix seconds"),
        (f"t=-5,v1={'a' * 64}", "'t' must appear once, as unix seconds"),
        (f"t={T},t={T},v1={'a' * 64}", "'t' must appear once"),
        (f"t={T},v1=abc", "'v1' must be 64 hex digits"),
        (f"t={T},v1={'g' * 64}", "'v1' must be 64 hex digits"),
        (f"t={T}," + ",".join([f"v1={'a' * 64}"] * 9), "more than 8 signatures"),
        ("t=1," + "x" * 5000, "too long"),
    ],
)
def test_malformed_headers(header: str | None, message: str) -> None:
    with pytest.raises(WebhookSignatureError, match=message) as caught:
        verify(SECRET, header, BODY, now=T)
    assert caught.value.reason == "malformed"


def test_parse_header() -> None:
    assert parse_header(f"t={T},v1={'A' * 64},v1={'b' * 64}") == (T, ["a" * 64, "b" * 64])


@pytest.mark.parametrize("secret", ["", b"", [], ["ok", ""]])
def test_empty_secret_is_a_configuration_error(secret: str | bytes | list[str]) -> None:
    with pytest.raises(ValueError, match="webhook secret is empty"):
        sign(secret, BODY, T)
    with pytest.raises(ValueError, match="webhook secret is empty"):
        verify(secret, f"t={T},v1={'a' * 64}", BODY, now=T)
