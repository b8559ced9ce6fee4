"""Fixtures shared by every test: one localstripe server per session, a clean store per test, and
a check that no test sent localstripe a customer request real Stripe would refuse
(``stripe_contract_check``; opt out with ``@pytest.mark.stripe_contract_violations_expected``).

Other fixtures live next to the tests that need them; keep this file small.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import stripe

from support.localstripe_process import STRIPE_TEST_KEY, LocalStripe

pytest_plugins = ["tests.support.fixtures"]  # fault_proxy, proxied_client


@pytest.fixture(autouse=True)
def stripe_contract_check(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail the test when a localstripe of this process refused one of its requests for breaking
    Stripe's contract (``support/stripe_contract.py``). Costs a ``stat`` per running server
    (the session's, the e2e module's) unless something was refused; covers requests from Airflow
    subprocesses and through the fault proxy too, as they all reach the server."""
    marks = {server: server.mark() for server in LocalStripe.running}
    yield
    if request.node.get_closest_marker("stripe_contract_violations_expected"):
        return
    found = [
        f"{v['method']} {v['path']}: {v['violation']}"
        for server in LocalStripe.running
        for v in server.contract_violations(since=marks.get(server, 0))
    ]
    if found:
        pytest.fail(
            f"{len(found)} request(s) that real Stripe refuses (localstripe answered 400):\n  "
            + "\n  ".join(found),
            pytrace=False,
        )


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
