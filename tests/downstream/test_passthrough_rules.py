"""The rules of pass-through calls that need no server: rate limits and their parsing, and
how a server's rate_limit is configured."""

from __future__ import annotations

import pytest

from gateway.application.passthrough import RateLimit, RateLimiter, RateLimitError
from gateway.downstream.config import ServerConfigError, parse_server


@pytest.mark.parametrize(
    ("text", "calls", "seconds"),
    [("60/min", 60, 60), ("10/s", 10, 1), ("1000/hours", 1000, 3600), ("5/10s", 5, 10)],
)
def test_a_rate_limit_is_calls_per_period(text: str, calls: int, seconds: float) -> None:
    limit = RateLimit.parse(text)
    assert (limit.calls, limit.seconds, limit.text) == (calls, seconds, text)


@pytest.mark.parametrize("text", ["60 per minute", "0/min", "5/0s", "10/fortnight", "/min"])
def test_a_rate_limit_that_cannot_be_read_names_the_expected_shape(text: str) -> None:
    with pytest.raises(RateLimitError, match=r"CALLS/PERIOD|positive"):
        RateLimit.parse(text)


def test_the_window_slides_and_each_key_has_its_own() -> None:
    limiter, limit = RateLimiter(), RateLimit.parse("2/min")
    assert limiter.admit(("a", "files"), limit, 0.0) is None
    assert limiter.admit(("a", "files"), limit, 1.0) is None
    assert limiter.admit(("a", "files"), limit, 2.0) == pytest.approx(58.0)
    assert limiter.admit(("b", "files"), limit, 2.0) is None  # another token
    assert limiter.admit(("a", "ledger"), limit, 2.0) is None  # another server
    assert limiter.admit(("a", "files"), limit, 60.5) is None  # the first call has left
    assert limiter.admit(("a", "files"), limit, 60.6) == pytest.approx(0.4)


def test_a_servers_rate_limit_is_checked_when_the_config_is_read() -> None:
    config = parse_server("files", {"command": "x", "rate_limit": "30/min"}, "t.toml")
    assert config.rate == RateLimit.parse("30/min")
    with pytest.raises(ServerConfigError) as raised:
        parse_server("files", {"command": "x", "rate_limit": "fast"}, "t.toml")
    assert str(raised.value) == (
        "t.toml: server 'files' rate_limit: rate limit 'fast': expected CALLS/PERIOD such as "
        "'60/min', '10/s', '1000/hour' or '5/10s'"
    )
