"""A Stripe API double that serves a million customers without holding them (localstripe cannot).

Customer ``i`` (0 ≤ i < N) is computed from ``i`` on each request: id ``cus_dbl`` + 11 digits,
email ``person{i}@example.com`` (``Person{i}@Example.com`` for the few ``odd_case`` indices: Stripe
keeps an email's case, and its ``email`` filter is case-sensitive), name ``Person {i}``,
``metadata.profile_id`` = ``str(i)``, ``created`` = ``EPOCH - i`` so that Stripe's newest-first
order is ascending ``i``. Only what changes goes into an overlay (customers created, updated or
deleted through the API, idempotency keys, events), so memory follows the changes, not N.

Endpoints, with Stripe's shapes and form-encoded bodies as the ``stripe`` SDK sends them:
``GET/POST /v1/customers`` (list: ``limit`` ≤ 100, ``starting_after``, ``ending_before``, exact
``email``, ``created[gt|gte|lt|lte]``; create with ``Idempotency-Key``), ``GET/POST/DELETE
/v1/customers/{id}``, ``GET /v1/account``, ``GET /v1/events`` (``types[]``, ``created[…]``,
``limit``, ``starting_after``, ``ending_before``) and ``GET /v1/events/{id}``. Filters are answered
without scanning: an email is parsed back into its index, a ``created`` range into a range of
indices. Requests are counted per endpoint where Stripe would count them; the list endpoint is
split by filter (``customers.list``: plain pages, ``customers.list(email)``,
``customers.list(created)``)::

    GET  /_double/calls        {"customers.list": 10000, "customers.create": 1000, ...}
    POST /_double/reset        zero the counts (``?all=1``: forget the overlay and events too)
    GET  /_double/duplicates   live customers sharing a normalised email or metadata.profile_id,
                               among those created through the API (and the computed ones)

Run it in a process of its own (``StripeDouble`` below, or ``python -m support.stripe_double
--port 0``); it prints ``stripe double listening on http://127.0.0.1:PORT`` once it accepts
connections. Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web

READY_PREFIX = "stripe double listening on "
HOST = "127.0.0.1"
ACCOUNT = "acct_double"
EPOCH = 1_700_000_000  # customer i was created at EPOCH - i: newest first = ascending i
ID_PREFIX = "cus_dbl"
ID_DIGITS = 11
NEW_PREFIX = "cus_new"  # customers created through the API
EVENT_PREFIX = "evt_dbl"
DEFAULT_CUSTOMERS = 1_000_000
ROOT = Path(__file__).resolve().parent.parent

_BASE_ID = re.compile(rf"^{ID_PREFIX}(\d{{{ID_DIGITS}}})$")
_PLAIN_EMAIL = re.compile(r"^person(\d+)@example\.com$")
_ODD_EMAIL = re.compile(r"^Person(\d+)@Example\.com$")
_CREATED_OPS = ("gt", "gte", "lt", "lte")
CUSTOMER_PARAMS = frozenset(
    {
        "address",
        "description",
        "email",
        "metadata",
        "name",
        "phone",
        "preferred_locales",
        "shipping",
        "tax_exempt",
        "expand",
    }
)
EVENT_TYPES = ("customer.created", "customer.updated", "customer.deleted")
Positions = list[range | list[int]]  # ascending chunks of positions in a list's order


def base_id(i: int) -> str:
    """The id of computed customer ``i``."""
    return f"{ID_PREFIX}{i:0{ID_DIGITS}d}"


def base_email(i: int, odd: bool = False) -> str:
    """The email of computed customer ``i`` (``odd``: its case is not canonical)."""
    return f"Person{i}@Example.com" if odd else f"person{i}@example.com"


def _customer(cid: str, created: int, fields: dict[str, Any]) -> dict[str, Any]:
    """A customer with every field Stripe returns (``fields`` override the defaults)."""
    return {
        "id": cid,
        "object": "customer",
        "address": None,
        "balance": 0,
        "created": created,
        "currency": None,
        "default_source": None,
        "delinquent": False,
        "description": None,
        "discount": None,
        "email": None,
        "invoice_prefix": cid[-8:].upper(),
        "invoice_settings": {
            "custom_fields": None,
            "default_payment_method": None,
            "footer": None,
            "rendering_options": None,
        },
        "livemode": False,
        "metadata": {},
        "name": None,
        "next_invoice_sequence": 1,
        "phone": None,
        "preferred_locales": [],
        "shipping": None,
        "tax_exempt": "none",
        "test_clock": None,
        **fields,
    }


def decode_form(pairs: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """Stripe's form encoding (``a[b][c]=v``, ``list[0]=v``, ``list[]=v``) as nested values."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        parts = re.findall(r"[^\[\]]+|\[\]", key)
        if not parts:
            continue
        node: Any = out
        for here, after in itertools.pairwise(parts):
            listing = after == "[]" or after.isdigit()
            if isinstance(node, list):
                node.append([] if listing else {})
                node = node[-1]
                continue
            node = node.setdefault(here, [] if listing else {})
        last = parts[-1]
        if isinstance(node, list):
            node.append(value)
        else:
            node[last] = value
    return out


class ApiError(Exception):
    """An answer with Stripe's error shape."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        kind: str = "invalid_request_error",
    ):
        super().__init__(message)
        self.status, self.code, self.param, self.kind = status, code, param, kind

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"type": self.kind, "message": str(self)}
        if self.code:
            error["code"] = self.code
        if self.param:
            error["param"] = self.param
        return {"error": error}


@dataclass
class Account:
    """N computed customers and the overlay of what the API changed. Not thread-safe: one event loop."""

    customers: int = DEFAULT_CUSTOMERS
    odd_case: frozenset[int] = frozenset()
    seeded_events: tuple[tuple[str, int], ...] = ()  # (type, customer index), dated after events_since
    events_since: int = EPOCH
    changed: dict[str, dict[str, Any]] = field(
        default_factory=dict
    )  # id → live customer (created or updated)
    deleted: set[str] = field(default_factory=set)
    created_ids: list[str] = field(default_factory=list)  # oldest first
    created_rank: dict[str, int] = field(default_factory=dict)  # id → its place in created_ids
    by_email: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))  # overlay's exact emails
    idempotent: dict[str, tuple[str, int, dict[str, Any]]] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)  # oldest first
    calls: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self._seed_events()

    def _seed_events(self) -> None:
        for k, (kind, i) in enumerate(self.seeded_events):
            self._event(kind, self._computed(i), self.events_since + 1 + k)

    def reset(self, everything: bool = False) -> None:
        """Zero the counts; ``everything``: also forget the overlay and the events."""
        self.calls.clear()
        if everything:
            self.changed.clear()
            self.deleted.clear()
            self.created_ids.clear()
            self.created_rank.clear()
            self.by_email.clear()
            self.idempotent.clear()
            self.events.clear()
            self._seed_events()

    # -- reading ---------------------------------------------------------------------------------

    def _computed(self, i: int) -> dict[str, Any]:
        return _customer(
            base_id(i),
            EPOCH - i,
            {
                "email": base_email(i, i in self.odd_case),
                "name": f"Person {i}",
                "metadata": {"profile_id": str(i)},
            },
        )

    def _index(self, cid: str) -> int | None:
        found = _BASE_ID.match(cid)
        if found is None:
            return None
        i = int(found.group(1))
        return i if i < self.customers else None

    def get(self, cid: str) -> dict[str, Any] | None:
        """The live customer ``cid``, or None (unknown or deleted)."""
        if cid in self.deleted:
            return None
        if (known := self.changed.get(cid)) is not None:
            return known
        i = self._index(cid)
        return None if i is None else self._computed(i)

    def exists(self, cid: str) -> bool:
        """Whether ``cid`` ever existed (a deleted one answers ``deleted: true``)."""
        return cid in self.changed or cid in self.deleted or self._index(cid) is not None

    def _position(self, cid: str) -> int:
        """Where ``cid`` sits in the newest-first order (created through the API first)."""
        if (i := self._index(cid)) is not None:
            return len(self.created_ids) + i
        if (rank := self.created_rank.get(cid)) is None:
            raise ApiError(400, f"No such customer: '{cid}'", code="resource_missing", param="starting_after")
        return len(self.created_ids) - 1 - rank

    def _at(self, position: int) -> str:
        created = len(self.created_ids)
        return self.created_ids[created - 1 - position] if position < created else base_id(position - created)

    def _email_positions(self, email: str) -> list[int]:
        """Positions of the customers whose email is exactly ``email``, without scanning."""
        ids = set(self.by_email.get(email, ()))
        for pattern, odd in ((_PLAIN_EMAIL, False), (_ODD_EMAIL, True)):
            found = pattern.match(email)
            if found and str(int(found.group(1))) == found.group(1):
                i = int(found.group(1))
                if i < self.customers and (i in self.odd_case) == odd and base_id(i) not in self.changed:
                    ids.add(base_id(i))
        return sorted(self._position(cid) for cid in ids if cid not in self.deleted)

    def _created_positions(self, bounds: dict[str, int]) -> Positions:
        """Positions (in order) of customers created inside ``bounds``: the computed ones as a range."""

        def inside(created: int) -> bool:
            return all(
                (op != "gt" or created > v)
                and (op != "gte" or created >= v)
                and (op != "lt" or created < v)
                and (op != "lte" or created <= v)
                for op, v in bounds.items()
            )

        count = len(self.created_ids)
        made = [p for p in range(count) if inside(self.changed[self._at(p)]["created"])]
        # computed customer i has created = EPOCH - i: solve each bound for i
        lo, hi = 0, self.customers
        for op, v in bounds.items():
            if op == "gt":
                hi = min(hi, EPOCH - v)  # EPOCH - i > v ⇔ i < EPOCH - v
            elif op == "gte":
                hi = min(hi, EPOCH - v + 1)
            elif op == "lt":
                lo = max(lo, EPOCH - v + 1)
            elif op == "lte":
                lo = max(lo, EPOCH - v)
        return [made, range(count + max(0, lo), count + max(0, hi))]

    def list_customers(self, query: dict[str, Any]) -> dict[str, Any]:
        """``GET /v1/customers``: a page in Stripe's newest-first order."""
        limit = _limit(query)
        bounds = _created(query)
        if "email" in query:
            self.calls["customers.list(email)"] += 1
            found = self._email_positions(str(query["email"]))
            positions: Positions = [[p for p in found if _inside_created(self._live_at(p), bounds)]]
        elif bounds:
            self.calls["customers.list(created)"] += 1
            positions = self._created_positions(bounds)
        else:
            self.calls["customers.list"] += 1
            positions = [range(len(self.created_ids) + self.customers)]
        return _page(
            "/v1/customers",
            positions,
            limit,
            query,
            self._position,
            lambda p: self.get(self._at(p)),
        )

    def _live_at(self, position: int) -> dict[str, Any]:
        return self.get(self._at(position)) or {"created": 0}

    # -- writing ---------------------------------------------------------------------------------

    def create(
        self, params: dict[str, Any], idempotency_key: str | None, raw: str
    ) -> tuple[int, dict[str, Any]]:
        """``POST /v1/customers``; the same ``Idempotency-Key`` answers the first answer again."""
        if idempotency_key is not None and idempotency_key in self.idempotent:
            body, status, answer = self.idempotent[idempotency_key]
            if body != raw:
                raise ApiError(
                    400,
                    "Keys for idempotent requests can only be used with the same parameters they were "
                    "first used with.",
                    kind="idempotency_error",
                )
            return status, answer
        fields = _fields(params, {})
        cid = f"{NEW_PREFIX}{len(self.created_ids):0{ID_DIGITS}d}"
        created = max(int(time.time()), EPOCH + 1)
        customer = _customer(cid, created, fields)
        self.changed[cid] = customer
        self.created_rank[cid] = len(self.created_ids)
        self.created_ids.append(cid)
        if customer["email"]:
            self.by_email[customer["email"]].add(cid)
        self._event("customer.created", customer)
        if idempotency_key is not None:
            self.idempotent[idempotency_key] = (raw, 200, customer)
        return 200, customer

    def update(self, cid: str, params: dict[str, Any]) -> dict[str, Any]:
        """``POST /v1/customers/{id}``: fields set, ``""`` unsets, metadata merged key by key."""
        current = self.get(cid)
        if current is None:
            raise _missing(cid)
        before = dict(current)
        customer = {**current, **_fields(params, current)}
        if before.get("email") != customer.get("email"):
            if before.get("email"):
                self.by_email[before["email"]].discard(cid)
            if customer.get("email"):
                self.by_email[customer["email"]].add(cid)
        self.changed[cid] = customer
        previous = {k: before.get(k) for k in customer if before.get(k) != customer[k]}
        self._event("customer.updated", customer, previous=previous)
        return customer

    def delete(self, cid: str) -> dict[str, Any]:
        """``DELETE /v1/customers/{id}``."""
        current = self.get(cid)
        if current is None:
            raise _missing(cid)
        self.deleted.add(cid)
        if current.get("email"):
            self.by_email[current["email"]].discard(cid)
        self.changed.pop(cid, None)
        self.changed[cid] = current  # kept for its position in the order; deleted wins on reads
        self._event("customer.deleted", current)
        return {"id": cid, "object": "customer", "deleted": True}

    # -- events ----------------------------------------------------------------------------------

    def _event(
        self,
        kind: str,
        customer: dict[str, Any],
        created: int | None = None,
        previous: dict[str, Any] | None = None,
    ) -> None:
        data: dict[str, Any] = {"object": dict(customer)}
        if previous:
            data["previous_attributes"] = previous
        self.events.append(
            {
                "id": f"{EVENT_PREFIX}{len(self.events):0{ID_DIGITS}d}",
                "object": "event",
                "api_version": "2025-01-27.acacia",
                "created": created if created is not None else max(int(time.time()), EPOCH + 1),
                "data": data,
                "livemode": False,
                "pending_webhooks": 0,
                "request": {"id": None, "idempotency_key": None},
                "type": kind,
            }
        )

    def list_events(self, query: dict[str, Any]) -> dict[str, Any]:
        """``GET /v1/events``: newest first, by ``types``/``type`` and ``created``."""
        self.calls["events.list"] += 1
        limit = _limit(query)
        bounds = _created(query)
        types = query.get("types") or ([query["type"]] if "type" in query else None)
        if isinstance(types, dict):
            types = list(types.values())
        count = len(self.events)

        def at(p: int) -> dict[str, Any]:
            return self.events[count - 1 - p]

        positions: Positions = [
            [
                p
                for p in range(count)
                if (not types or at(p)["type"] in types) and _inside_created(at(p), bounds)
            ]
        ]

        def position(eid: str) -> int:
            if not eid.startswith(EVENT_PREFIX) or not eid[len(EVENT_PREFIX) :].isdigit():
                raise ApiError(400, f"No such event: '{eid}'", code="resource_missing")
            return count - 1 - int(eid[len(EVENT_PREFIX) :])

        return _page("/v1/events", positions, limit, query, position, at)

    def event(self, eid: str) -> dict[str, Any]:
        """``GET /v1/events/{id}``."""
        self.calls["events.retrieve"] += 1
        number = eid[len(EVENT_PREFIX) :]
        if eid.startswith(EVENT_PREFIX) and number.isdigit() and int(number) < len(self.events):
            return self.events[int(number)]
        raise ApiError(404, f"No such event: '{eid}'", code="resource_missing", param="id")

    # -- checks ----------------------------------------------------------------------------------

    def duplicates(self) -> dict[str, Any]:
        """Live customers sharing a normalised email or a ``metadata.profile_id``: those created
        through the API with each other and with the computed ones (computed ones never share)."""
        result: dict[str, Any] = {
            "created": len(self.created_ids) - len(self.deleted & set(self.created_ids))
        }
        for what, value_of in (
            ("email", lambda c: (c.get("email") or "").strip().lower()),
            ("profile_id", lambda c: str((c.get("metadata") or {}).get("profile_id") or "")),
        ):
            groups: dict[str, list[str]] = defaultdict(list)
            for cid in self.created_ids:
                if (customer := self.get(cid)) is not None and (value := value_of(customer)):
                    groups[value].append(cid)
            found = []
            for value, ids in groups.items():
                twin = self._computed_twin(what, value)
                if twin is not None:
                    ids = [twin, *ids]
                if len(ids) > 1:
                    found.append({"value": value, "ids": ids})
            result[f"by_{what}"] = found
        return result

    def _computed_twin(self, what: str, value: str) -> str | None:
        """The computed customer that holds ``value`` (a normalised email or a profile id), if live."""
        if what == "email":
            found = _PLAIN_EMAIL.match(value)
            number = found.group(1) if found else None
        else:
            number = value if value.isdigit() else None
        if number is None or str(int(number)) != number or int(number) >= self.customers:
            return None
        cid = base_id(int(number))
        customer = self.get(cid)
        if customer is None:
            return None
        held = (
            (customer.get("email") or "").strip().lower()
            if what == "email"
            else str((customer.get("metadata") or {}).get("profile_id") or "")
        )
        return cid if held == value else None


def _missing(cid: str) -> ApiError:
    return ApiError(404, f"No such customer: '{cid}'", code="resource_missing", param="id")


def _limit(query: dict[str, Any]) -> int:
    raw = query.get("limit", "10")
    if not str(raw).isdigit() or not 1 <= int(raw) <= 100:
        raise ApiError(400, "Invalid limit: must be between 1 and 100", param="limit")
    return int(raw)


def _created(query: dict[str, Any]) -> dict[str, int]:
    value = query.get("created")
    if value is None:
        return {}
    if isinstance(value, str):
        return {"gte": int(value), "lte": int(value)}
    unknown = set(value) - set(_CREATED_OPS)
    if unknown:
        raise ApiError(400, f"Received unknown parameter: created[{sorted(unknown)[0]}]", param="created")
    return {op: int(v) for op, v in value.items()}


def _inside_created(item: dict[str, Any], bounds: dict[str, int]) -> bool:
    created = int(item.get("created", 0))
    return (
        ("gt" not in bounds or created > bounds["gt"])
        and ("gte" not in bounds or created >= bounds["gte"])
        and ("lt" not in bounds or created < bounds["lt"])
        and ("lte" not in bounds or created <= bounds["lte"])
    )


def _page(
    url: str,
    positions: Positions,
    limit: int,
    query: dict[str, Any],
    position_of: Callable[[str], int],
    item_at: Callable[[int], dict[str, Any] | None],
) -> dict[str, Any]:
    """One page of ``positions`` (ascending chunks; items that read as None are skipped), after
    ``starting_after`` or just before ``ending_before``, as Stripe pages."""
    data: list[dict[str, Any]] = []
    has_more = False
    if query.get("ending_before"):
        for p in _backward(positions, position_of(str(query["ending_before"]))):
            if (item := item_at(p)) is None:
                continue
            if len(data) == limit:
                has_more = True
                break
            data.append(item)
        data.reverse()
    else:
        start = position_of(str(query["starting_after"])) + 1 if query.get("starting_after") else 0
        for p in _forward(positions, start):
            if (item := item_at(p)) is None:
                continue
            if len(data) == limit:
                has_more = True
                break
            data.append(item)
    return {"object": "list", "data": data, "has_more": has_more, "url": url}


def _forward(positions: Positions, start: int) -> Iterator[int]:
    """The positions from ``start`` on, ascending, without walking the ranges below it."""
    for chunk in positions:
        if isinstance(chunk, range):
            yield from range(max(start, chunk.start), chunk.stop)
        else:
            yield from (p for p in chunk if p >= start)


def _backward(positions: Positions, end: int) -> Iterator[int]:
    """The positions below ``end``, descending."""
    for chunk in reversed(positions):
        if isinstance(chunk, range):
            yield from reversed(range(chunk.start, min(end, chunk.stop)))
        else:
            yield from (p for p in reversed(chunk) if p < end)


def _fields(params: dict[str, Any], current: dict[str, Any]) -> dict[str, Any]:
    """What ``params`` set on a customer (Stripe's rules: ``""`` unsets, metadata merges)."""
    unknown = sorted(set(params) - CUSTOMER_PARAMS)
    if unknown:
        raise ApiError(400, f"Received unknown parameter: {unknown[0]}", param=unknown[0])
    out: dict[str, Any] = {}
    for name, value in params.items():
        if name == "expand":
            continue
        if name == "metadata":
            merged = dict(current.get("metadata") or {})
            if value == "":
                merged = {}
            elif isinstance(value, dict):
                for key, text in value.items():
                    if text == "":
                        merged.pop(key, None)
                    else:
                        merged[key] = text
            else:
                raise ApiError(400, "Invalid metadata: must be an object", param="metadata")
            out["metadata"] = merged
        elif name == "preferred_locales":
            out[name] = [] if value == "" else list(value if isinstance(value, list) else [value])
        elif name == "tax_exempt":
            if value not in ("", "none", "exempt", "reverse"):
                raise ApiError(400, "Invalid tax_exempt", param="tax_exempt")
            out[name] = value or "none"
        elif name in ("address", "shipping"):
            out[name] = None if value == "" else value
        else:
            out[name] = None if value == "" else value
    return out


# -- the server ---------------------------------------------------------------------------------------


def make_app(account: Account) -> web.Application:
    """The aiohttp application answering for ``account``."""

    async def handle(request: web.Request) -> web.StreamResponse:
        try:
            return await _route(account, request)
        except ApiError as exc:
            return web.json_response(exc.body(), status=exc.status)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=json.dumps(body, separators=(",", ":")).encode(), status=status, content_type="application/json"
    )


async def _route(account: Account, request: web.Request) -> web.StreamResponse:
    path, method = request.path.rstrip("/"), request.method
    if path.startswith("/_double/"):
        what = path.removeprefix("/_double/")
        if what == "calls" and method == "GET":
            return _json(dict(account.calls))
        if what == "reset" and method == "POST":
            account.reset(everything=request.query.get("all") in ("1", "true"))
            return _json({"reset": True})
        if what == "duplicates" and method == "GET":
            return _json(account.duplicates())
        if what == "state" and method == "GET":
            return _json(
                {
                    "customers": account.customers,
                    "created": len(account.created_ids),
                    "changed": len(account.changed),
                    "deleted": len(account.deleted),
                    "events": len(account.events),
                }
            )
        raise ApiError(404, f"Unrecognized request URL ({method}: {path})")
    if not request.headers.get("Authorization", "").startswith("Bearer "):
        return web.json_response(
            {"error": {"type": "invalid_request_error", "message": "You did not provide an API key."}},
            status=401,
        )
    raw = await request.text() if method == "POST" else ""
    query = decode_form(parse_qsl(request.query_string, keep_blank_values=True))
    body = decode_form(parse_qsl(raw, keep_blank_values=True))
    parts = path.split("/")[1:]  # v1, customers, id
    if parts == ["v1", "account"] and method == "GET":
        account.calls["account.retrieve"] += 1
        return _json({"id": ACCOUNT, "object": "account", "type": "standard"})
    if parts[:2] == ["v1", "customers"] and len(parts) == 2:
        if method == "GET":
            return _json(account.list_customers(query))
        if method == "POST":
            account.calls["customers.create"] += 1
            key = request.headers.get("Idempotency-Key")
            status, customer = account.create(body, key, raw)
            return _json(customer, status)
    if parts[:2] == ["v1", "customers"] and len(parts) == 3:
        cid = parts[2]
        if method == "GET":
            account.calls["customers.retrieve"] += 1
            found = account.get(cid)
            if found is None:
                if account.exists(cid):
                    return _json({"id": cid, "object": "customer", "deleted": True})
                raise _missing(cid)
            return _json(found)
        if method == "POST":
            account.calls["customers.update"] += 1
            return _json(account.update(cid, body))
        if method == "DELETE":
            account.calls["customers.delete"] += 1
            return _json(account.delete(cid))
    if parts == ["v1", "events"] and method == "GET":
        return _json(account.list_events(query))
    if parts[:2] == ["v1", "events"] and len(parts) == 3 and method == "GET":
        return _json(account.event(parts[2]))
    account.calls["unknown"] += 1
    raise ApiError(404, f"Unrecognized request URL ({method}: {path})")


async def serve(account: Account, port: int, *, exit_on_stdin_eof: bool = False) -> None:
    """Serve ``account`` on 127.0.0.1:port until SIGINT/SIGTERM (or stdin EOF if asked)."""
    runner = web.AppRunner(make_app(account), access_log=None)
    await runner.setup()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((HOST, port))
    site = web.SockSite(runner, sock)
    await site.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    if exit_on_stdin_eof:

        def wait_for_eof() -> None:
            while sys.stdin.buffer.read(4096):
                pass
            loop.call_soon_threadsafe(stop.set)

        threading.Thread(target=wait_for_eof, name="stdin-eof", daemon=True).start()
    print(f"{READY_PREFIX}http://{HOST}:{sock.getsockname()[1]}", flush=True)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def odd_case_indices(customers: int, every: int) -> frozenset[int]:
    """The indices whose email has a non-canonical case: one in ``every`` (0: none), from 42."""
    if every <= 0:
        return frozenset()
    return frozenset(range(min(42, every - 1), customers, every))


def main(argv: list[str] | None = None) -> None:
    """``python -m support.stripe_double --port 0 --customers 1000000``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, default=0, help="TCP port; 0 picks a free one")
    parser.add_argument("--customers", type=int, default=DEFAULT_CUSTOMERS)
    parser.add_argument(
        "--odd-case-every",
        type=int,
        default=100_000,
        help="one customer in this many has a non-canonical email case (Person42@Example.com); 0: none",
    )
    parser.add_argument(
        "--event",
        action="append",
        default=[],
        metavar="TYPE:INDEX",
        help="a pre-seeded event, e.g. customer.updated:17 (repeatable), dated after --events-since",
    )
    parser.add_argument(
        "--events-since", type=int, default=EPOCH, help="the pre-seeded events follow this time"
    )
    parser.add_argument("--exit-on-stdin-eof", action="store_true", help="stop when stdin is closed")
    args = parser.parse_args(argv)
    seeded = []
    for item in args.event:
        kind, _, index = item.partition(":")
        if kind not in EVENT_TYPES or not index.isdigit():
            parser.error(f"--event {item!r}: expected TYPE:INDEX with TYPE one of {', '.join(EVENT_TYPES)}")
        seeded.append((kind, int(index)))
    account = Account(
        customers=args.customers,
        odd_case=odd_case_indices(args.customers, args.odd_case_every),
        seeded_events=tuple(seeded),
        events_since=args.events_since,
    )
    asyncio.run(serve(account, args.port, exit_on_stdin_eof=args.exit_on_stdin_eof))


# -- the parent's side ----------------------------------------------------------------------------------


class StripeDouble:
    """One double in a child process (as ``LocalStripe`` runs localstripe), stopped with its parent."""

    def __init__(
        self,
        customers: int = DEFAULT_CUSTOMERS,
        *,
        odd_case_every: int = 100_000,
        events: Iterable[tuple[str, int]] = (),
        events_since: int = EPOCH,
        startup_timeout: float = 30.0,
    ) -> None:
        self.customers = customers
        self.odd_case = odd_case_indices(customers, odd_case_every)
        self._command = [
            sys.executable,
            "-m",
            "support.stripe_double",
            "--port",
            "0",
            "--customers",
            str(customers),
            "--odd-case-every",
            str(odd_case_every),
            "--events-since",
            str(events_since),
            "--exit-on-stdin-eof",
            *(f"--event={kind}:{i}" for kind, i in events),
        ]
        self.startup_timeout = startup_timeout
        self._process: subprocess.Popen[str] | None = None
        self._url: str | None = None

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:41234``."""
        if self._url is None:
            raise RuntimeError("the Stripe double is not running: call start() first")
        return self._url

    def start(self) -> StripeDouble:
        """Start the child and wait for its ready line."""
        if self._process is not None:
            return self
        self._process = subprocess.Popen(
            self._command, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        lines: queue.Queue[str] = queue.Queue()
        stdout = self._process.stdout
        assert stdout is not None

        def pump() -> None:
            for line in stdout:
                lines.put(line)
            lines.put("")

        threading.Thread(target=pump, name="stripe-double-stdout", daemon=True).start()
        try:
            while True:
                line = lines.get(timeout=self.startup_timeout)
                if not line:
                    raise RuntimeError("the Stripe double exited during startup")
                if line.startswith(READY_PREFIX):
                    self._url = line[len(READY_PREFIX) :].strip()
                    return self
        except BaseException:
            self.stop()
            raise

    def _request(self, method: str, path: str) -> Any:
        request = urllib.request.Request(f"{self.url}{path}", method=method)
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    def calls(self) -> Counter[str]:
        """Requests received since the last reset, by endpoint."""
        return Counter(self._request("GET", "/_double/calls"))

    def reset(self, everything: bool = False) -> None:
        """Zero the counts (``everything``: forget the overlay and events too)."""
        self._request("POST", "/_double/reset" + ("?all=1" if everything else ""))

    def duplicates(self) -> dict[str, Any]:
        """See ``Account.duplicates``."""
        return dict(self._request("GET", "/_double/duplicates"))

    def state(self) -> dict[str, int]:
        """How big the overlay is."""
        return dict(self._request("GET", "/_double/state"))

    def stop(self) -> None:
        """Stop the child: its stdin closed (it stops on EOF), else SIGTERM, else SIGKILL.

        EOF first: a SIGTERM while the child's stdin thread reads would abort its interpreter."""
        process, self._process, self._url = self._process, None, None
        if process is None:
            return
        if process.stdin is not None:
            process.stdin.close()
        for stop in (None, process.terminate, process.kill):
            if stop is not None:
                stop()
            try:
                process.wait(timeout=5)
                break
            except subprocess.TimeoutExpired:
                continue
        if process.stdout is not None:
            process.stdout.close()

    def __enter__(self) -> StripeDouble:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


if __name__ == "__main__":
    main()
