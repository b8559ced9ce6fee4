"""Run localstripe for the tests, the benchmarks and the demo: loopback only, in memory only, on a chosen port.

Usage, from the repository root::

    python -m support.localstripe_server --port 0      # 0 = any free port
    python support/localstripe_server.py --port 8420

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
* Customers take ``tax_exempt`` (``none|exempt|reverse``; ``""`` resets it to ``none``, which is
  also what a customer created without it shows), as Stripe's do; stock answers 400 "Unexpected
  tax_exempt". An email Stripe could not parse is refused with 400 ``email_invalid``.
* ``GET /v1/account`` answers the account this server plays (``--account``, else a random
  ``acct_…`` per server, so two servers are two Stripe accounts and any key of one server reaches
  the same account), which stock localstripe lacks (404). A key containing ``customers_only``
  (e.g. ``sk_test_customers_only_1``) plays a restricted key with only Customers permissions:
  ``GET /v1/account`` answers Stripe's 403 ``permission_error``, everything else works. (Stock
  localstripe refuses ``rk_…`` keys everywhere with 401, which the tests use as a revoked key.)
* ``--exit-on-stdin-eof`` makes the server stop when its stdin closes, so a test process that
  dies without cleaning up does not leave a server behind.
* Stripe's contract is enforced on the customer endpoints (``POST /v1/customers``, ``POST
  /v1/customers/{id}``, ``GET /v1/customers``, ``GET /v1/customers/{id}``, ``DELETE
  /v1/customers/{id}``): a middleware checks
  each request with ``stripe_contract.py`` (the parameter definitions stripe-python carries) and
  answers what real Stripe would refuse, and stock localstripe takes (``preferred_locales=""``,
  ``shipping[name]=""``, unknown parameters, an update with no parameters...), with Stripe's 400
  ``{"error": {"type": "invalid_request_error", "message", "param"}}`` (the first violation)
  without passing it on. With ``--contract-log PATH`` every violation is also appended to PATH as
  one JSON line ``{"method", "path", "param", "violation"}``, so the tests can fail on them.

Requests are logged to stderr (like stock) unless ``--quiet``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import re
import secrets
import signal
import socket
import sys
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from localstripe import resources, server
from localstripe.errors import UserError

try:
    from support import stripe_contract
except ImportError:  # run as a script (LocalStripe does): support/ is on sys.path, the root may not be
    import stripe_contract  # type: ignore[no-redef]

READY_PREFIX = "localstripe listening on "
CUSTOMERS_ONLY = "customers_only"  # in a key: it may not read the account (GET /v1/account → 403)
HOST = "127.0.0.1"

_ADDRESS_KEYS = {"line1", "line2", "city", "state", "postal_code", "country"}
_SHIPPING_KEYS = {"name", "address", "phone"}
_TAX_EXEMPT = ("none", "exempt", "reverse")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


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


def _checked_tax_exempt(value: Any) -> str:
    """``tax_exempt`` as Stripe takes it: one of ``none|exempt|reverse``, ``""`` resets it to none."""
    if value == "":
        return "none"
    if value not in _TAX_EXEMPT:
        raise UserError(
            400, f"Invalid tax_exempt: must be one of {', '.join(_TAX_EXEMPT)}", {"param": "tax_exempt"}
        )
    return str(value)


def _checked_email(email: Any) -> None:
    """Stripe refuses an email it cannot parse (400 ``email_invalid``); stock localstripe stores it."""
    if isinstance(email, str) and email.strip() and not _EMAIL.match(email.strip()):
        raise UserError(400, f"Invalid email address: {email}", {"param": "email", "code": "email_invalid"})


def customers_like_stripe() -> None:
    """Let customers take ``shipping`` and ``tax_exempt`` as Stripe does, and check ``email``
    (see the module docstring)."""
    stock_create = resources.Customer._api_create.__func__

    def create(cls: type, shipping: Any = None, tax_exempt: Any = "none", **data: Any) -> Any:
        checked = _checked_shipping(shipping)  # before anything is stored
        exempt = _checked_tax_exempt(tax_exempt)
        _checked_email(data.get("email"))
        customer = stock_create(cls, **data)
        customer.shipping = checked
        customer.tax_exempt = exempt
        return customer

    resources.Customer._api_create = classmethod(create)

    stock_update = resources.Customer._api_update.__func__

    def update(cls: type, id: str, **data: Any) -> Any:
        if "shipping" in data:
            data["shipping"] = _checked_shipping(data["shipping"])
        exempt = _checked_tax_exempt(data.pop("tax_exempt")) if "tax_exempt" in data else None
        _checked_email(data.get("email"))
        customer = stock_update(cls, id, **data)
        if exempt is not None:
            customer.tax_exempt = exempt
        return customer

    resources.Customer._api_update = classmethod(update)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def account_middleware(account: str) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    """Answer ``GET /v1/account`` as the account ``account`` (see the module docstring)."""

    @web.middleware
    async def account_route(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path != "/v1/account" or request.method != "GET":
            return await handler(request)
        key = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        if CUSTOMERS_ONLY in key:
            error = {
                "type": "invalid_request_error",
                "code": "permission_error",
                "message": "The provided key does not have the required permissions for this endpoint.",
            }
            return web.json_response({"error": error}, status=403)
        return web.json_response({"id": account, "object": "account", "type": "standard"})

    return account_route


def contract_middleware(
    log_path: Path | None,
) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    """Refuse customer requests that break Stripe's contract, as Stripe would (see the docstring)."""

    @web.middleware
    async def check_contract(request: web.Request, handler: Handler) -> web.StreamResponse:
        if stripe_contract.endpoint_params(request.method, request.path) is None:
            return await handler(request)
        if request.method in ("GET", "DELETE"):  # their parameters travel in the query string
            found = stripe_contract.check_form(request.method, request.path, request.query_string)
        elif request.content_type == "application/x-www-form-urlencoded" or not request.can_read_body:
            body = await request.text()  # aiohttp keeps it for localstripe's handler
            found = stripe_contract.check_form(request.method, request.path, body)
        else:
            message = f"{request.content_type}: Stripe's v1 API takes form-encoded bodies"
            found = [stripe_contract.Violation(None, message)]
        if not found:
            return await handler(request)
        if log_path is not None:
            with log_path.open("a", encoding="utf-8") as log:
                for violation in found:
                    line = {"method": request.method, "path": request.path, "param": violation.param}
                    log.write(json.dumps({**line, "violation": violation.message}) + "\n")
        error = {"type": "invalid_request_error", "message": found[0].message, "param": found[0].param}
        return web.json_response({"error": error}, status=400)

    return check_contract


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


async def serve(
    port: int,
    *,
    quiet: bool = False,
    exit_on_stdin_eof: bool = False,
    contract_log: Path | None = None,
    account: str | None = None,
) -> None:
    """Serve localstripe on 127.0.0.1:port until SIGINT/SIGTERM (or stdin EOF if asked)."""
    server.app.middlewares.insert(0, contract_middleware(contract_log))  # outermost: first to see
    server.app.middlewares.insert(0, account_middleware(account or f"acct_{secrets.token_hex(8)}"))
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
    parser.add_argument(
        "--contract-log", type=Path, help="append each contract violation to this file (JSON lines)"
    )
    parser.add_argument("--account", help="the acct_… id GET /v1/account answers (default: random)")
    args = parser.parse_args(argv)

    disable_persistence()
    customers_like_stripe()
    asyncio.run(
        serve(
            args.port,
            quiet=args.quiet,
            exit_on_stdin_eof=args.exit_on_stdin_eof,
            contract_log=args.contract_log,
            account=args.account,
        )
    )


if __name__ == "__main__":
    main()
