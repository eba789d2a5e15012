"""Secrets: provider API keys with known shapes, PEM private keys, JWTs, and high-entropy tokens.

Each provider pattern is gated by a literal prefix so text without it costs one `in` test.
Patterns accept a partial key once it is long enough to be unmistakable, which lets the stream
scanner act on a key before its end has arrived.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from gateway.guardrails.checksums import shannon_entropy
from gateway.guardrails.findings import Finding
from gateway.guardrails.quick import has_digit

_END = r"(?![A-Za-z0-9_-])"
# (kind, literal that must occur, pattern). Order matters where shapes nest (Anthropic keys start "sk-").
PROVIDER_KEYS: tuple[tuple[str, str, re.Pattern[str]], ...] = (
    ("anthropic_key", "sk-ant-", re.compile(r"sk-ant-[a-z]{2,8}\d{2}-[A-Za-z0-9_-]{20,}" + _END)),
    (
        "openai_key",
        "sk-",
        re.compile(r"(?<![A-Za-z0-9_-])sk-(?:proj-|svcacct-|admin-|None-)?[A-Za-z0-9_-]{20,}" + _END),
    ),
    ("aws_access_key", "", re.compile(r"(?<![A-Z0-9])(?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}(?![A-Z0-9])")),
    ("github_token", "gh", re.compile(r"(?<![A-Za-z0-9_])gh[pousr]_[A-Za-z0-9]{30,}" + _END)),
    ("github_pat", "github_pat_", re.compile(r"github_pat_[A-Za-z0-9_]{22,}" + _END)),
    ("slack_token", "xox", re.compile(r"(?<![A-Za-z0-9])xox[abposre]-[A-Za-z0-9-]{10,}" + _END)),
    (
        "slack_webhook",
        "hooks.slack.com",
        re.compile(r"https://hooks\.slack\.com/services/[A-Za-z0-9/_-]{20,}"),
    ),
    ("stripe_key", "_live_", re.compile(r"(?<![A-Za-z0-9])(?:sk|rk)_live_[A-Za-z0-9]{16,}" + _END)),
    ("stripe_key", "_test_", re.compile(r"(?<![A-Za-z0-9])(?:sk|rk)_test_[A-Za-z0-9]{16,}" + _END)),
    ("google_api_key", "AIza", re.compile(r"AIza[0-9A-Za-z_-]{35}" + _END)),
)

# A BEGIN line with no END yet still counts (truncated paste, or a stream still arriving).
PEM_PRIVATE_KEY = re.compile(
    r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----"
    r"(?:[\s\S]*?-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----|[A-Za-z0-9+/=\s]*)"
)
JWT = re.compile(r"(?<![A-Za-z0-9_-])eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{16,}" + _END)
# `password = hunter2`-style assignments: the value is the secret, whatever its shape.
ASSIGNMENT = re.compile(
    r"(?i)\b(?:password|passwd|pwd|passphrase|secret|client_secret|api[_-]?key|access[_-]?key|"
    r"secret[_-]?key|auth[_-]?token|access[_-]?token)\b[\"']?\s*[:=]\s*[\"']?([^\s\"',;()<>]{6,})"
)
ASSIGNMENT_HINTS = ("pass", "pwd", "secret", "key", "token")
TOKEN = re.compile(r"(?<![A-Za-z0-9+/_=.-])[A-Za-z0-9+/_=-]{24,}(?![A-Za-z0-9+/_=.-])")
# Random base62 of length 24 averages ~4.3 bits/char; identifiers, words and hex digests stay below.
MIN_TOKEN_ENTROPY = 4.1


def _looks_random(token: str) -> bool:
    if not (any(c.isdigit() for c in token) and any(c.isupper() for c in token)):
        return False
    if not any(c.islower() for c in token):
        return False
    return shannon_entropy(token) >= MIN_TOKEN_ENTROPY


AWS_PREFIXES = ("AKIA", "ASIA", "ABIA", "ACCA")


def find_secrets(text: str) -> Iterator[Finding]:
    for kind, literal, pattern in PROVIDER_KEYS:
        if literal in text if literal else any(p in text for p in AWS_PREFIXES):
            for m in pattern.finditer(text):
                yield Finding("SECRET", m.start(), m.end(), f"secret:{kind}")
    if "-----BEGIN" in text:
        for m in PEM_PRIVATE_KEY.finditer(text):
            yield Finding("SECRET", m.start(), m.end(), "secret:private_key")
    if "eyJ" in text:
        for m in JWT.finditer(text):
            yield Finding("SECRET", m.start(), m.end(), "secret:jwt")
    lowered = text.lower()
    assignments = ASSIGNMENT.finditer(text) if any(w in lowered for w in ASSIGNMENT_HINTS) else ()
    for m in assignments:
        value = m.group(1)
        # "token = tokenizer.encode(x)" assigns code, not a secret: require a digit or a symbol.
        if any(c.isdigit() for c in value) or not value.replace("_", "").replace(".", "").isalpha():
            if "(" not in value and not value.endswith("."):
                yield Finding("SECRET", m.start(1), m.end(1), "secret:assignment")
    # A high-entropy token must hold a digit (_looks_random): prose without one has none.
    for m in TOKEN.finditer(text) if has_digit(text) else ():
        if _looks_random(m.group()):
            yield Finding("SECRET", m.start(), m.end(), "secret:high_entropy", score=0.8)
