"""Run localstripe for the tests and the demo: loopback only, in memory only, on a chosen port.

Usage, from the repository root::

    python -m tests.support.localstripe_server --port 0      # 0 = any free port
    python tests/support/localstripe_server.py --port 8420

Once the server accepts connections it prints exactly one line to stdout and flushes it::

    localstripe listening on http://127.0.0.1:PORT

Differences from stock ``localstripe`` 1.15.10 (``python -m localstripe``):

* It binds ``127.0.0.1`` only; stock binds ``::`` (every interface of the machine).
* It keeps nothing on disk. Stock pickles its whole store to ``/tmp/localstripe.pickle`` after
  every write and reloads that file at start, so runs leak into each other (and into every other
  localstripe on the machine) and each write costs O(store size). ``Store.dump_to_disk`` and
  ``Store.try_load_from_disk`` are replaced by no-ops.
* ``POST /v1/customers`` accepts ``shipping`` like Stripe does (stock answers 400
  "Unexpected shipping" although ``Customer`` has a ``shipping`` attribute and accepts it on
  update). Shape checked on create and on update (stock stores anything on update):
  ``{"name": str, "address": {line1, line2, city, state, postal_code, country: str}, "phone":
  str}`` with ``name`` (not empty) and ``address`` required, as in Stripe's API; ``shipping=""``
  removes it (stored as null, as Stripe shows it). The ``customer.created`` event (only visible
  through webhooks) still shows ``shipping: null``.
* ``--exit-on-stdin-eof`` makes the server stop when its stdin closes, so a test process that
  dies without cleaning up does not leave a server behind.

Requests are logged to stderr (like stock) unless ``--quiet``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import socket
import sys
import threading
from typing import Any

from aiohttp import web
from localstripe import resources, server
from localstripe.errors import UserError

READY_PREFIX = "localstripe listening on "
HOST = "127.0.0.1"

_ADDRESS_KEYS = {"line1", "line2", "city", "state", "postal_code", "country"}
_SHIPPING_KEYS = {"name", "address", "phone"}


def _no_op(*_args: Any, **_kwargs: Any) -> None:
    return None


def disable_persistence() -> None:
    """Keep the store in memory only (see the module docstring)."""
    resources.Store.dump_to_disk = _no_op
    resources.Store.try_load_from_disk = _no_op


def _checked_shipping(shipping: Any) -> dict[str, Any] | None:
    """Validate ``shipping`` as Stripe does for customers; raise localstripe's 400 otherwise."""
    if shipping is None or shipping == "":  # Stripe: an empty string means "no shipping".
        return None
    if isinstance(shipping, dict) and shipping.get("name") == "":
        raise UserError(
            400,
            "You passed an empty string for 'shipping[name]', which cannot be unset; "
            "send shipping='' to remove the shipping details",
            {"param": "shipping[name]"},
        )
    valid = (
        isinstance(shipping, dict)
        and set(shipping) <= _SHIPPING_KEYS
        and isinstance(shipping.get("name"), str)
        and isinstance(shipping.get("address"), dict)
        and set(shipping["address"]) <= _ADDRESS_KEYS
        and all(isinstance(v, str) for v in shipping["address"].values())
        and isinstance(shipping.get("phone", ""), str)
    )
    if not valid:
        raise UserError(400, "Bad request: invalid shipping", {"param": "shipping"})
    return dict(shipping)


def shipping_like_stripe() -> None:
    """Let ``POST /v1/customers`` take ``shipping``, and check it on update (see the module docstring)."""
    stock_create = resources.Customer._api_create.__func__

    def create(cls: type, shipping: Any = None, **data: Any) -> Any:
        checked = _checked_shipping(shipping)  # before anything is stored
        customer = stock_create(cls, **data)
        customer.shipping = checked
        return customer

    resources.Customer._api_create = classmethod(create)

    stock_update = resources.Customer._api_update.__func__

    def update(cls: type, id: str, **data: Any) -> Any:
        if "shipping" in data:
            data["shipping"] = _checked_shipping(data["shipping"])
        return stock_update(cls, id, **data)

    resources.Customer._api_update = classmethod(update)


def _bind(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((HOST, port))
    return sock


def _stop_when_stdin_closes(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    def wait_for_eof() -> None:
        while sys.stdin.buffer.read(4096):
            pass
        loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=wait_for_eof, name="stdin-eof", daemon=True).start()


async def serve(port: int, *, quiet: bool = False, exit_on_stdin_eof: bool = False) -> None:
    """Serve localstripe on 127.0.0.1:port until SIGINT/SIGTERM (or stdin EOF if asked)."""
    access_log: logging.Logger | None = None
    if not quiet:
        access_log = logging.getLogger("aiohttp.access")
        access_log.setLevel(logging.INFO)
        access_log.addHandler(logging.StreamHandler(sys.stderr))

    runner = web.AppRunner(server.app, access_log=access_log)
    await runner.setup()
    sock = _bind(port)
    site = web.SockSite(runner, sock)
    await site.start()  # listening from here on

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    if exit_on_stdin_eof:
        _stop_when_stdin_closes(loop, stop)

    print(f"{READY_PREFIX}http://{HOST}:{sock.getsockname()[1]}", flush=True)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, default=8420, help="TCP port; 0 picks a free one")
    parser.add_argument("--quiet", action="store_true", help="do not log requests to stderr")
    parser.add_argument(
        "--exit-on-stdin-eof", action="store_true", help="stop when stdin is closed (for parents)"
    )
    args = parser.parse_args(argv)

    disable_persistence()
    shipping_like_stripe()
    asyncio.run(serve(args.port, quiet=args.quiet, exit_on_stdin_eof=args.exit_on_stdin_eof))


if __name__ == "__main__":
    main()
