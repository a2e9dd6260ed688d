"""Personal-data redaction for what an LLM may see.

Two kinds of rules, applied recursively to dicts and lists:
- field-name rules: a dict value whose key names a secret (`password`, `api_token`, `apiKey`...) is
  replaced whole. Keys are compared word by word (split on `_`, `-`, `.`, spaces and camelCase),
  so `token` matches `api_token` and `accessToken` but not `tokens_used`.
- value patterns: e-mail addresses, phone numbers, payment card numbers (Luhn-checked), IBANs
  (mod-97-checked) and configurable national-id patterns inside strings are replaced by a label.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

REDACTED = "[REDACTED]"

DEFAULT_FIELD_RULES: tuple[str, ...] = (
    "password",
    "passwd",
    "passphrase",
    "secret",
    "token",
    "api_key",
    "apikey",
    "access_key",
    "private_key",
    "authorization",
    "cookie",
    "credentials",
    "cvv",
    "cvc",
    "pin",
    "ssn",
)

_WORD_SPLIT = re.compile(r"[_\-.\s]+|(?<=[a-z0-9])(?=[A-Z])")
_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")
_CARD = re.compile(r"(?<![\d-])(?:\d[ -]?){12,18}\d(?![\d-])")
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}(?:[ T]\d{2}:\d{2}(?::\d{2})?)?")
_PHONE = re.compile(r"(?<![\w+(])\+?\(?\d[\d ().-]{7,}\d(?!\w)")


def words(name: str) -> tuple[str, ...]:
    return tuple(w.lower() for w in _WORD_SPLIT.split(name) if w)


def _luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _iban_ok(text: str) -> bool:
    compact = text.replace(" ", "")
    if not 15 <= len(compact) <= 34:
        return False
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(ch, 36)) for ch in rearranged)) % 97 == 1


@dataclass(frozen=True)
class RedactionRules:
    """What to hide from prompts. `national_ids` maps a label to a regular expression."""

    field_names: tuple[str, ...] = DEFAULT_FIELD_RULES
    emails: bool = True
    phones: bool = True
    cards: bool = True
    ibans: bool = True
    national_ids: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_field_words", tuple(words(f) for f in self.field_names))
        compiled = tuple((label, re.compile(rx)) for label, rx in self.national_ids.items())
        object.__setattr__(self, "_national", compiled)

    def is_sensitive_name(self, name: str) -> bool:
        key = words(name)
        for rule in self._field_words:  # type: ignore[attr-defined]
            n = len(rule)
            if any(key[i : i + n] == rule for i in range(len(key) - n + 1)):
                return True
        return False

    def redact_text(self, text: str) -> str:
        if self.emails:
            text = _EMAIL.sub("[EMAIL]", text)
        if self.ibans:
            text = _IBAN.sub(lambda m: "[IBAN]" if _iban_ok(m.group()) else m.group(), text)
        if self.cards:
            text = _CARD.sub(_card_or_keep, text)
        for label, pattern in self._national:  # type: ignore[attr-defined]
            text = pattern.sub(f"[{label.upper()}]", text)
        if self.phones:
            text = _PHONE.sub(_phone_or_keep, text)
        return text

    def redact(self, value: Any) -> Any:
        """A copy of `value` with sensitive fields and personal data replaced."""
        if isinstance(value, str):
            return self.redact_text(value)
        if isinstance(value, Mapping):
            return {
                k: REDACTED if isinstance(k, str) and self.is_sensitive_name(k) else self.redact(v)
                for k, v in value.items()
            }
        if isinstance(value, list | tuple):
            return [self.redact(v) for v in value]
        return value

    def any_sensitive(self, names: Iterable[str | int]) -> bool:
        return any(isinstance(n, str) and self.is_sensitive_name(n) for n in names)


def _card_or_keep(match: re.Match[str]) -> str:
    digits = re.sub(r"\D", "", match.group())
    return "[CARD]" if 13 <= len(digits) <= 19 and _luhn_ok(digits) else match.group()


def _phone_or_keep(match: re.Match[str]) -> str:
    text = match.group()
    if _DATE.fullmatch(text.strip()):
        return text
    digits = re.sub(r"\D", "", text)
    low = 8 if text.startswith("+") else 10  # an international prefix makes shorter numbers likely
    return "[PHONE]" if low <= len(digits) <= 15 else text
