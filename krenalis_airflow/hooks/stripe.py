"""StripeHook: an Airflow connection turned into a cached ``stripe.StripeClient``.

A thin wrapper around the SDK (like the slack provider's hook). The connection holds:

* password: a secret key (``sk_…``) or a restricted key (``rk_…``) with Customers: write;
* host (optional): the API base URL, e.g. ``http://127.0.0.1:8420`` for localstripe; empty means
  ``https://api.stripe.com``, and a host without a scheme gets ``https://``;
* extras ``max_network_retries`` (default 4), ``timeout`` in seconds (default 80), and
  ``rate_limit`` / ``endpoint_rate_limit`` in requests/s (default: Stripe's limits for the key's
  mode), declared as form fields in ``krenalis_airflow.get_provider_info``.

Every hook builds its own client, so two connections (or two accounts) can be used side by side;
the global ``stripe.api_key`` is never touched. The key never appears in logs, exception messages
or ``repr`` (Airflow additionally masks connection passwords in task logs).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

import stripe
from airflow.sdk import BaseHook
from airflow.sdk.exceptions import AirflowNotFoundException

from krenalis_airflow.core.destination import key_fingerprint
from krenalis_airflow.core.ratelimit import Limits
from krenalis_airflow.core.redact import redact, redact_stripe_logs
from krenalis_airflow.core.stripe_api import KEY_FIX, key_rejected, permission_missing
from krenalis_airflow.exceptions import ConnectionUnusable

if TYPE_CHECKING:
    from airflow.sdk import Connection

DEFAULT_MAX_NETWORK_RETRIES = 4
DEFAULT_TIMEOUT = 80.0
KNOWN_EXTRAS = frozenset({"max_network_retries", "timeout", "rate_limit", "endpoint_rate_limit"})


@dataclass(frozen=True)
class StripeSettings:
    """What a client needs, read and checked from one Airflow connection."""

    api_key: str = field(repr=False)
    api_base: str
    max_network_retries: int
    timeout: float
    limits: Limits

    @property
    def mode(self) -> Literal["test", "live"]:
        """``"test"`` for ``sk_test_``/``rk_test_`` keys, else ``"live"``."""
        return _mode(self.api_key)

    @property
    def fingerprint(self) -> str:
        """The Stripe these settings write to, named without the key (``key:`` and a digest;
        ``core/destination.py``): the shared rate limit's name, and the ledger's until the key's
        account is known."""
        return key_fingerprint(self.api_key, self.api_base)


def settings_from_connection(conn: Connection) -> StripeSettings:
    """Check the connection's fields; raise ``ConnectionUnusable`` saying what to fix."""
    extra = conn.extra_dejson
    return StripeSettings(
        api_key=_api_key(conn.conn_id, conn.password),
        api_base=_api_base(conn.conn_id, conn.host, conn.port),
        max_network_retries=_retries_extra(conn.conn_id, extra),
        timeout=_timeout_extra(conn.conn_id, extra),
        limits=Limits.for_mode(
            _mode(conn.password),
            _rate_extra(conn.conn_id, extra, "rate_limit"),
            _rate_extra(conn.conn_id, extra, "endpoint_rate_limit"),
        ),
    )


def _api_key(conn_id: str, password: str | None) -> str:
    key = (password or "").strip()
    if key.startswith(("sk_", "rk_")) and len(key) > 3:
        return key
    if not key:
        found = "the password is empty"
    elif key.startswith("pk_"):
        found = "it holds a publishable key (pk_…), which cannot read or write customers"
    else:
        found = "it does not hold a Stripe API key"
    raise ConnectionUnusable(
        f"Stripe connection {conn_id!r}: {found}; {KEY_FIX} (it starts with sk_ or rk_)."
    )


def _api_base(conn_id: str, host: str | None, port: int | None) -> str:
    base = (host or "").strip().rstrip("/")
    if not base:
        return stripe.DEFAULT_API_BASE
    if "://" not in base:
        base = f"https://{base}"
    parts = urlsplit(base)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConnectionUnusable(
            f"Stripe connection {conn_id!r}: the host must be an API base URL such as "
            "https://api.stripe.com or http://127.0.0.1:8420 (or empty for Stripe itself)."
        )
    if port and parts.port is None:  # URI-style connections put the port in its own field
        base = parts._replace(netloc=f"{parts.netloc}:{port}").geturl()
    return base


def _retries_extra(conn_id: str, extra: dict[str, Any]) -> int:
    value = extra.get("max_network_retries")
    if value is None or value == "":
        return DEFAULT_MAX_NETWORK_RETRIES
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConnectionUnusable(
            f"Stripe connection {conn_id!r}: extra 'max_network_retries' must be a whole number >= 0, "
            f"got {value!r}."
        )
    return value


def _mode(password: str | None) -> Literal["test", "live"]:
    return "test" if (password or "").strip().startswith(("sk_test_", "rk_test_")) else "live"


def _positive_extra(conn_id: str, extra: dict[str, Any], name: str, unit: str) -> float | None:
    """The extra ``name`` as a finite number > 0, None when unset; anything else is refused."""
    value = extra.get(name)
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = 0.0
    if isinstance(value, bool) or not 0 < number < float("inf"):
        raise ConnectionUnusable(
            f"Stripe connection {conn_id!r}: extra {name!r} must be {unit} > 0, got {value!r}."
        )
    return number


def _rate_extra(conn_id: str, extra: dict[str, Any], name: str) -> float | None:
    return _positive_extra(conn_id, extra, name, "requests per second")


def _timeout_extra(conn_id: str, extra: dict[str, Any]) -> float:
    seconds = _positive_extra(conn_id, extra, "timeout", "a number of seconds")
    return DEFAULT_TIMEOUT if seconds is None else seconds


class StripeHook(BaseHook):
    """Give operators a ``stripe.StripeClient`` configured from an Airflow connection.

    :param stripe_conn_id: the Airflow connection (type ``stripe``) to use.
    """

    conn_name_attr = "stripe_conn_id"
    default_conn_name = "stripe_default"
    conn_type = "stripe"
    hook_name = "Stripe"

    def __init__(self, stripe_conn_id: str = default_conn_name) -> None:
        super().__init__()
        self.stripe_conn_id = stripe_conn_id

    def __repr__(self) -> str:
        return f"{type(self).__name__}(stripe_conn_id={self.stripe_conn_id!r})"

    @cached_property
    def settings(self) -> StripeSettings:
        """The connection's settings, read once (raises ``ConnectionUnusable`` if unusable)."""
        conn = self.get_connection(self.stripe_conn_id)
        settings = settings_from_connection(conn)
        unknown = sorted(set(conn.extra_dejson) - KNOWN_EXTRAS)
        if unknown:
            self.log.warning("Stripe connection %r: ignoring unknown extras %s", self.stripe_conn_id, unknown)
        return settings

    @cached_property
    def client(self) -> stripe.StripeClient:
        """The client, built on first use and reused afterwards."""
        settings = self.settings
        redact_stripe_logs()
        self.log.info(
            "Stripe connection %r: %s mode, %s, %d retries, %ss timeout, at most %s",
            self.stripe_conn_id,
            settings.mode,
            settings.api_base,
            settings.max_network_retries,
            settings.timeout,
            settings.limits.describe(),
        )
        return stripe.StripeClient(
            settings.api_key,
            base_addresses={"api": settings.api_base},
            max_network_retries=settings.max_network_retries,
            http_client=stripe.new_default_http_client(timeout=settings.timeout),
        )

    def get_conn(self) -> stripe.StripeClient:
        """The Stripe client, as Airflow's ``BaseHook`` interface expects."""
        return self.client

    @property
    def mode(self) -> Literal["test", "live"]:
        """``"test"`` for ``sk_test_``/``rk_test_`` keys, else ``"live"``."""
        return self.settings.mode

    def test_connection(self) -> tuple[bool, str]:
        """Prove the key can read customers (lists one); say what to fix when it cannot."""
        try:
            settings = self.settings
            self.client.v1.customers.list(params={"limit": 1})
        except (ConnectionUnusable, AirflowNotFoundException) as error:
            return False, str(error)
        except stripe.StripeError as error:
            return False, self._explain(error)
        return True, (
            f"Connected to Stripe at {settings.api_base} ({settings.mode} mode): the key can read "
            "customers. Syncing also needs Customers: write, which is not tested here."
        )

    def _explain(self, error: stripe.StripeError) -> str:
        base = self.settings.api_base
        said = redact(error.user_message or "", self.settings.api_key)
        if isinstance(error, stripe.AuthenticationError):
            return key_rejected(said, where=f"Stripe at {base}")
        if isinstance(error, stripe.PermissionError):
            return permission_missing(said)
        if isinstance(error, stripe.APIConnectionError):
            return (
                f"Could not reach Stripe at {base}: check the connection's host (the API base URL; "
                "leave it empty for https://api.stripe.com) and the network."
            )
        return f"Stripe at {base} answered HTTP {error.http_status}: {said}"
