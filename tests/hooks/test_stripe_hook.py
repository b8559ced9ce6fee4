"""StripeHook against a real localstripe over HTTP, with connections defined as AIRFLOW_CONN_* env vars.

A few failure modes localstripe cannot produce (403, slow or failing answers) come from a tiny
local HTTP server, ``fake_stripe``.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import stripe

from krenalis_airflow import get_provider_info
from krenalis_airflow.exceptions import ConnectionUnusable
from krenalis_airflow.hooks.stripe import (
    DEFAULT_MAX_NETWORK_RETRIES,
    DEFAULT_TIMEOUT,
    KEY_FIX,
    KNOWN_EXTRAS,
    StripeHook,
)
from support.localstripe_process import STRIPE_TEST_KEY

SECRETISH = "sk_test_SUPERSECRET0123456789"


def set_conn(monkeypatch: pytest.MonkeyPatch, conn_id: str, **fields: Any) -> None:
    """Define an Airflow connection of type stripe through its env var (JSON form)."""
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps({"conn_type": "stripe", **fields}))


def closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class FakeStripe:
    """Answers every request with ``status``/``body`` after ``delay`` seconds; counts requests."""

    def __init__(self) -> None:
        self.status = 200
        self.body: dict[str, Any] = {"object": "list", "data": [], "has_more": False, "url": "/v1/customers"}
        self.headers: dict[str, str] = {}
        self.delay = 0.0
        self.requests = 0
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                fake.requests += 1
                time.sleep(fake.delay)
                payload = json.dumps(fake.body).encode()
                try:
                    self.send_response(fake.status)
                    for name, value in {"Content-Type": "application/json", **fake.headers}.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):  # the client timed out
                    pass

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"


@pytest.fixture
def fake_stripe() -> Iterator[FakeStripe]:
    fake = FakeStripe()
    thread = threading.Thread(target=fake.server.serve_forever, daemon=True)
    thread.start()
    yield fake
    fake.server.shutdown()
    fake.server.server_close()


# --- talking to Stripe (localstripe) -------------------------------------------------------------


def test_client_from_env_connection_creates_and_lists_customers(stripe_conn_env: str) -> None:
    hook = StripeHook(stripe_conn_env)
    client = hook.get_conn()

    created = [
        client.v1.customers.create(params={"email": f"ada{i}@example.com", "metadata": {"i": str(i)}})
        for i in range(3)
    ]
    listed = {c.id: c.email for c in client.v1.customers.list(params={"limit": 100}).auto_paging_iter()}

    assert listed == {c.id: c.email for c in created}
    assert hook.client is client  # cached: one client per hook
    assert stripe.api_key is None  # the global key is never touched


def test_default_conn_id_is_stripe_default(stripe_conn_env: str) -> None:
    hook = StripeHook()
    assert hook.stripe_conn_id == "stripe_default"
    assert hook.get_conn().v1.customers.list().data == []


def test_second_connection_id_is_used_instead_of_the_default(
    stripe_url: str, stripe_client: stripe.StripeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    set_conn(
        monkeypatch, "stripe_default", password=STRIPE_TEST_KEY, host=f"http://127.0.0.1:{closed_port()}"
    )
    set_conn(monkeypatch, "stripe_eu", password="sk_test_second_account", host=stripe_url)

    customer = StripeHook("stripe_eu").client.v1.customers.create(params={"name": "Grace"})

    assert stripe_client.v1.customers.retrieve(customer.id).name == "Grace"


def test_uri_form_connection_with_host_and_port(stripe_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    port = stripe_url.rsplit(":", 1)[1]
    monkeypatch.setenv(
        "AIRFLOW_CONN_STRIPE_URI", f"stripe://:{STRIPE_TEST_KEY}@http%3A%2F%2F127.0.0.1:{port}"
    )

    hook = StripeHook("stripe_uri")

    assert hook.settings.api_base == stripe_url
    assert hook.client.v1.customers.create(params={"name": "Uri"}).name == "Uri"


def test_hook_init_does_no_io() -> None:
    hook = StripeHook("not_defined_anywhere")  # would raise if it looked the connection up
    ok, message = hook.test_connection()
    assert not ok
    assert "not_defined_anywhere" in message


# --- the key: validated, never shown ------------------------------------------------------------


@pytest.mark.parametrize(
    ("password", "expected"),
    [
        ("pk_test_SUPERSECRET0123456789", "publishable key"),
        ("whsec_SUPERSECRET0123456789", "does not hold a Stripe API key"),
        ("SUPERSECRET0123456789", "does not hold a Stripe API key"),
        ("", "the password is empty"),
    ],
)
def test_bad_key_is_rejected_with_the_fix_and_without_the_key(
    password: str, expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    set_conn(monkeypatch, "stripe_bad", password=password, host="http://127.0.0.1:1")
    hook = StripeHook("stripe_bad")

    with pytest.raises(ConnectionUnusable) as raised:
        hook.get_conn()

    message = str(raised.value)
    assert expected in message
    assert KEY_FIX in message
    assert "SUPERSECRET" not in message + repr(raised.value)
    ok, tested = hook.test_connection()
    assert not ok
    assert KEY_FIX in tested
    assert "SUPERSECRET" not in tested


def test_key_never_in_repr_str_or_logs(
    stripe_url: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    set_conn(monkeypatch, "stripe_secret", password=SECRETISH, host=stripe_url)
    caplog.set_level(logging.DEBUG)
    hook = StripeHook("stripe_secret")

    assert hook.test_connection()[0]
    hook.client.v1.customers.create(params={"name": "Logged"})

    output = capsys.readouterr()  # Airflow's structlog setup writes hook logs to stdout
    logs = caplog.text + output.out + output.err
    for text in (repr(hook), str(hook), repr(hook.settings), logs):
        assert SECRETISH not in text
    assert "stripe_secret" in repr(hook)
    assert "Stripe connection 'stripe_secret': test mode" in logs  # the hook did log, just not the key


@pytest.mark.parametrize(
    ("key", "mode"),
    [
        ("sk_test_abc123", "test"),
        ("rk_test_abc123", "test"),
        ("sk_live_abc123", "live"),
        ("rk_live_abc123", "live"),
    ],
)
def test_mode_follows_the_key(key: str, mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    set_conn(monkeypatch, "stripe_mode", password=key)
    assert StripeHook("stripe_mode").mode == mode


# --- host and extras ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "api_base"),
    [
        (None, "https://api.stripe.com"),
        ("", "https://api.stripe.com"),
        ("stripe-proxy.internal", "https://stripe-proxy.internal"),
        ("stripe-proxy.internal:8443/", "https://stripe-proxy.internal:8443"),
        ("http://127.0.0.1:8420/", "http://127.0.0.1:8420"),
    ],
)
def test_api_base_from_host(host: str | None, api_base: str, monkeypatch: pytest.MonkeyPatch) -> None:
    set_conn(monkeypatch, "stripe_host", password=STRIPE_TEST_KEY, host=host)
    assert StripeHook("stripe_host").settings.api_base == api_base


def test_host_without_scheme_is_reached_over_https(stripe_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """localstripe speaks plain HTTP, so the https:// the hook adds makes the request fail."""
    bare = stripe_url.removeprefix("http://")
    set_conn(
        monkeypatch, "stripe_bare", password=STRIPE_TEST_KEY, host=bare, extra={"max_network_retries": 0}
    )

    ok, message = StripeHook("stripe_bare").test_connection()

    assert not ok
    assert f"Could not reach Stripe at https://{bare}" in message


def test_bad_host_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    set_conn(monkeypatch, "stripe_ftp", password=STRIPE_TEST_KEY, host="ftp://files.example.com")
    with pytest.raises(ConnectionUnusable, match="API base URL"):
        StripeHook("stripe_ftp").get_conn()


@pytest.mark.parametrize(
    ("extra", "retries", "timeout"),
    [
        ({}, DEFAULT_MAX_NETWORK_RETRIES, DEFAULT_TIMEOUT),
        ({"max_network_retries": None, "timeout": None}, DEFAULT_MAX_NETWORK_RETRIES, DEFAULT_TIMEOUT),
        ({"max_network_retries": 0, "timeout": 2.5}, 0, 2.5),
        ({"max_network_retries": "5", "timeout": "30"}, 5, 30.0),
    ],
)
def test_extras_are_read(
    extra: dict[str, Any], retries: int, timeout: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    set_conn(monkeypatch, "stripe_extra", password=STRIPE_TEST_KEY, extra=extra)
    settings = StripeHook("stripe_extra").settings
    assert (settings.max_network_retries, settings.timeout) == (retries, timeout)


@pytest.mark.parametrize(
    "extra",
    [
        {"max_network_retries": -1},
        {"max_network_retries": "two"},
        {"max_network_retries": True},
        {"timeout": 0},
    ],
)
def test_bad_extras_are_rejected(extra: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    set_conn(monkeypatch, "stripe_extra", password=STRIPE_TEST_KEY, extra=extra)
    with pytest.raises(ConnectionUnusable, match=next(iter(extra))):
        StripeHook("stripe_extra").get_conn()


def test_timeout_extra_reaches_the_http_client(
    fake_stripe: FakeStripe, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_stripe.delay = 3
    set_conn(
        monkeypatch,
        "stripe_slow",
        password=STRIPE_TEST_KEY,
        host=fake_stripe.url,
        extra={"timeout": 0.3, "max_network_retries": 0},
    )

    started = time.monotonic()
    ok, message = StripeHook("stripe_slow").test_connection()

    assert not ok
    assert "Could not reach Stripe" in message
    assert time.monotonic() - started < 2


def test_max_network_retries_extra_reaches_the_client(
    fake_stripe: FakeStripe, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_stripe.status = 503
    fake_stripe.headers = {"Stripe-Should-Retry": "true"}
    fake_stripe.body = {"error": {"type": "api_error", "message": "try again"}}
    set_conn(
        monkeypatch,
        "stripe_flaky",
        password=STRIPE_TEST_KEY,
        host=fake_stripe.url,
        extra={"max_network_retries": 1},
    )

    ok, message = StripeHook("stripe_flaky").test_connection()

    assert not ok
    assert "HTTP 503" in message
    assert fake_stripe.requests == 2  # the first try and one retry


# --- test_connection ----------------------------------------------------------------------------


def test_test_connection_succeeds_against_localstripe(stripe_conn_env: str, stripe_url: str) -> None:
    ok, message = StripeHook(stripe_conn_env).test_connection()
    assert ok, message
    assert stripe_url in message
    assert "test mode" in message


def test_test_connection_fails_on_a_closed_port(monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    set_conn(
        monkeypatch, "stripe_closed", password=STRIPE_TEST_KEY, host=url, extra={"max_network_retries": 0}
    )

    ok, message = StripeHook("stripe_closed").test_connection()

    assert not ok
    assert f"Could not reach Stripe at {url}" in message
    assert "host" in message


def test_test_connection_explains_401(stripe_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """localstripe answers 401 to every key that does not start with sk_, restricted keys included."""
    set_conn(monkeypatch, "stripe_rk", password="rk_test_SUPERSECRET0123456789", host=stripe_url)

    ok, message = StripeHook("stripe_rk").test_connection()

    assert not ok
    assert "rejected the API key (401)" in message
    assert KEY_FIX in message
    assert "SUPERSECRET" not in message


def test_test_connection_explains_403_and_hides_the_masked_key(
    fake_stripe: FakeStripe, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_stripe.status = 403
    fake_stripe.body = {
        "error": {
            "type": "invalid_request_error",
            "message": "The provided key 'rk_test_*********6789' does not have the required "
            "permissions for this endpoint on account 'acct_1'. Having the 'rak_customer_read' "
            "permission would allow this request to continue.",
        }
    }
    set_conn(monkeypatch, "stripe_403", password="rk_test_SUPERSECRET0123456789", host=fake_stripe.url)

    ok, message = StripeHook("stripe_403").test_connection()

    assert not ok
    assert "(403)" in message
    assert "Customers: read" in message
    assert "rak_customer_read" in message  # Stripe's own words are kept...
    assert "6789" not in message  # ...minus the (masked) key


# --- provider metadata --------------------------------------------------------------------------


def test_form_fields_match_what_the_hook_reads() -> None:
    (conn_type,) = get_provider_info()["connection-types"]
    fields = conn_type["conn-fields"]
    assert conn_type["connection-type"] == StripeHook.conn_type
    assert conn_type["hook-class-name"] == f"{StripeHook.__module__}.{StripeHook.__name__}"
    assert set(fields) == KNOWN_EXTRAS
    assert fields["max_network_retries"]["schema"]["default"] == DEFAULT_MAX_NETWORK_RETRIES
    assert fields["timeout"]["schema"]["default"] == DEFAULT_TIMEOUT


def airflow_cli(tmp_path: Any, *args: str) -> Any:
    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path), "AIRFLOW__CORE__LOAD_EXAMPLES": "False"}
    result = subprocess.run(
        [sys.executable, "-m", "airflow", *args, "--output", "json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(result.stdout)


def test_airflow_lists_the_stripe_connection_type(tmp_path: Any) -> None:
    hooks = airflow_cli(tmp_path, "providers", "hooks")
    widgets = airflow_cli(tmp_path, "providers", "widgets")

    assert {
        "connection_type": "stripe",
        "class": "krenalis_airflow.hooks.stripe.StripeHook",
        "conn_id_attribute_name": "stripe_conn_id",
        "package_name": "krenalis-airflow",
        "hook_name": "Stripe",
    } in hooks
    stripe_widgets = {
        w["connection_parameter_name"] for w in widgets if w["package_name"] == "krenalis-airflow"
    }
    assert stripe_widgets == {
        "extra__stripe__max_network_retries",
        "extra__stripe__timeout",
        "extra__stripe__rate_limit",
        "extra__stripe__endpoint_rate_limit",
    }


def test_providers_manager_knows_the_form_behaviour() -> None:
    from airflow.providers_manager import ProvidersManager

    behaviour = ProvidersManager().field_behaviours["stripe"]

    assert behaviour["relabeling"] == {"password": "API key", "host": "API base URL"}
    assert {"login", "schema", "port"} <= set(behaviour["hidden_fields"])
