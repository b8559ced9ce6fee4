"""Keep API keys out of messages: Stripe echoes masked keys in its errors, and errors get logged."""

from __future__ import annotations

import re

# Anything shaped like a Stripe key, including Stripe's masked echoes ("sk_test_****abcd").
KEY_PATTERN = re.compile(r"\b[a-z]{2,5}_(?:test|live)_[A-Za-z0-9*]+")


def redact(text: str, key: str | None = None) -> str:
    """Remove the key (and anything shaped like a Stripe key) from a message."""
    if key:
        text = text.replace(key, "<api key>")
    return KEY_PATTERN.sub("<api key>", text)
