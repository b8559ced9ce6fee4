"""Fixtures for the fault proxy (``fault_proxy.py``), meant to be imported into ``tests/conftest.py``.

``fault_proxy`` sits in front of the session's localstripe (emptied for the test, like
``stripe_url``); ``proxied_client`` talks to it and never retries by itself, so each fault reaches
the code under test. Use the ``stripe_client`` fixture to look at localstripe directly, behind the
proxy's back.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import stripe

from support.fault_proxy import FaultProxy
from support.localstripe_process import STRIPE_TEST_KEY


@pytest.fixture
def fault_proxy(stripe_url: str) -> Iterator[FaultProxy]:
    """A fault proxy (no faults until configured, seed 0) in front of the emptied localstripe."""
    with FaultProxy(stripe_url, seed=0) as proxy:
        yield proxy


@pytest.fixture
def proxied_client(fault_proxy: FaultProxy) -> stripe.StripeClient:
    """A StripeClient talking to localstripe through the fault proxy, with SDK retries off."""
    return stripe.StripeClient(
        STRIPE_TEST_KEY, base_addresses={"api": fault_proxy.url}, max_network_retries=0
    )
