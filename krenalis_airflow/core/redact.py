"""Keep API keys out of messages: Stripe echoes masked keys in its errors, and errors get logged."""

from __future__ import annotations

import logging
import re

# Anything shaped like a Stripe key, including Stripe's masked echoes ("sk_test_****abcd").
KEY_PATTERN = re.compile(r"\b[a-z]{2,5}_(?:test|live)_[A-Za-z0-9*]+")


def redact(text: str, key: str | None = None) -> str:
    """Remove the key (and anything shaped like a Stripe key) from a message."""
    if key:
        text = text.replace(key, "<api key>")
    return KEY_PATTERN.sub("<api key>", text)


class RedactKeys(logging.Filter):
    """Rewrite a log record whose message carries anything shaped like a Stripe key."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Redact the message in place; never drops the record."""
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, ()
        return True


def redact_stripe_logs() -> None:
    """Keep keys out of the stripe SDK's own log lines (its request, response and error-body
    records on the ``stripe`` logger), wherever they are printed: Airflow masks connection
    passwords in task logs, but the CLI's ``preview``/``plan`` have no such masking. Idempotent.
    (``STRIPE_LOG=debug`` also makes the SDK print to stderr directly; that bypasses logging.)"""
    logger = logging.getLogger("stripe")
    if not any(isinstance(existing, RedactKeys) for existing in logger.filters):
        logger.addFilter(RedactKeys())
