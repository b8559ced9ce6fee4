"""Fixtures shared by every test: one localstripe server per session, a clean store per test.

Other fixtures live next to the tests that need them; keep this file small.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import stripe

from tests.support.localstripe_process import STRIPE_TEST_KEY, LocalStripe

pytest_plugins = ["tests.support.fixtures"]  # fault_proxy, proxied_client


@pytest.fixture(scope="session")
def localstripe() -> Iterator[LocalStripe]:
    """A localstripe server on 127.0.0.1 (free port), shared by the whole session."""
    with LocalStripe() as server:
        yield server


@pytest.fixture
def stripe_url(localstripe: LocalStripe) -> str:
    """Base URL of the session's localstripe, with an empty store."""
    localstripe.flush()
    return localstripe.url


@pytest.fixture
def stripe_client(stripe_url: str) -> stripe.StripeClient:
    """A StripeClient talking to the (emptied) localstripe."""
    return stripe.StripeClient(STRIPE_TEST_KEY, base_addresses={"api": stripe_url})


@pytest.fixture
def stripe_conn_env(stripe_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Define the Airflow connection ``stripe_default`` (env var) pointing at localstripe.

    Returns the connection id.
    """
    conn = {"conn_type": "stripe", "password": STRIPE_TEST_KEY, "host": stripe_url}
    monkeypatch.setenv("AIRFLOW_CONN_STRIPE_DEFAULT", json.dumps(conn))
    return "stripe_default"
