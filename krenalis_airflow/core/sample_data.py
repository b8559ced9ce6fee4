"""Deterministic sample customer profiles, and a writer that turns them into an SQLite warehouse.

The data is realistic enough to exercise every part of a pipeline: accented names (José, Zoë,
Müller) and apostrophes (O'Brien), E.164-style phones, national postal-code formats, plans with
matching lifetime values, and the dirt real warehouses have:

* about 2% of rows have a NULL email and about 1% an empty-string email;
* about 1% repeat an earlier row's email with different case or whitespace
  (``' Ada.Rossi12@Example.com'``), as when one person signs up twice;
* about 5% have no phone, about 2% no city and postal code.

Emails use the reserved ``example.com/.org/.net`` domains only. The same ``seed`` always yields
the same rows. Rows are generated lazily and inserted in chunks, so a million profiles need no
more memory than a thousand.
"""

from __future__ import annotations

import random
import sqlite3
import unicodedata
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import islice
from pathlib import Path
from typing import NamedTuple

TABLE = "customer_profiles"
CHUNK_SIZE = 10_000

NULL_EMAIL_SHARE = 0.02
EMPTY_EMAIL_SHARE = 0.01
DUPLICATE_EMAIL_SHARE = 0.01
NULL_PHONE_SHARE = 0.05
NO_ADDRESS_SHARE = 0.02
VIP_SHARE = 0.05

PLANS = (("free", 0.40), ("starter", 0.30), ("pro", 0.22), ("enterprise", 0.08))
# Median lifetime value per plan (EUR); actual values spread log-normally around it.
PLAN_VALUE = {"free": 0.0, "starter": 60.0, "pro": 450.0, "enterprise": 4000.0}
DOMAINS = (
    "example.com",
    "example.org",
    "example.net",
    "mail.example.com",
    "shop.example.org",
    "corp.example.net",
)
UPDATED_FROM = datetime(2023, 1, 1, tzinfo=UTC)
UPDATED_SPAN = int(timedelta(days=900).total_seconds())

CREATE_TABLE = f"""
CREATE TABLE {TABLE} (
    profile_id     TEXT PRIMARY KEY,
    email          TEXT,
    first_name     TEXT,
    last_name      TEXT,
    phone          TEXT,
    country        TEXT,
    city           TEXT,
    postal_code    TEXT,
    plan           TEXT,
    lifetime_value REAL,
    vip            INTEGER,
    updated_at     TEXT
)
"""


class Profile(NamedTuple):
    """One row of ``customer_profiles``, in column order (so it can be inserted as is)."""

    profile_id: str
    email: str | None
    first_name: str
    last_name: str
    phone: str | None
    country: str
    city: str | None
    postal_code: str | None
    plan: str
    lifetime_value: float
    vip: int
    updated_at: str


COLUMNS = Profile._fields


def _digits(rng: random.Random, count: int) -> str:
    return "".join(rng.choice("0123456789") for _ in range(count))


def _letters(rng: random.Random, count: int) -> str:
    return "".join(rng.choice("ABDEFGHJLNPRSTUWXYZ") for _ in range(count))


@dataclass(frozen=True)
class _Country:
    """Everything needed to make a plausible resident of one country."""

    code: str
    weight: float
    first_names: tuple[str, ...]
    last_names: tuple[str, ...]
    cities: tuple[tuple[str, str], ...]  # (city, postal-code prefix)
    postal: Callable[[random.Random, str], str]
    phone: Callable[[random.Random], str]


def _country(
    code: str,
    weight: float,
    first_names: str,
    last_names: str,
    cities: str,
    postal: Callable[[random.Random, str], str],
    phone: Callable[[random.Random], str],
) -> _Country:
    """Build a ``_Country`` from comma-separated names and ``"<city> <postal prefix>"`` pairs."""
    places = tuple((place.rpartition(" ")[0], place.rpartition(" ")[2]) for place in cities.split(", "))
    return _Country(
        code, weight, tuple(first_names.split(", ")), tuple(last_names.split(", ")), places, postal, phone
    )


COUNTRIES = (
    _country(
        "IT",
        0.18,
        "Giulia, Niccolò, Francesca, Luca, Chiara, Matteo, Ada, Lorenzo, Martina, Gioele",
        "Rossi, Bianchi, Esposito, Romano, Colombo, Ricci, D'Angelo, Galli, Ferrari, Conti",
        "Milano 201, Roma 001, Torino 101, Napoli 801, Bologna 401",
        lambda rng, prefix: prefix + _digits(rng, 2),
        lambda rng: f"+39 3{_digits(rng, 2)} {_digits(rng, 3)} {_digits(rng, 4)}",
    ),
    _country(
        "FR",
        0.15,
        "Zoë, Chloé, Hélène, Émile, François, Noël, Camille, Léa, Hugo, Inès",
        "Martin, Lefèvre, Dubois, Moreau, Girard, Bernard, Fournier, Mercier, Roux, Faure",
        "Paris 750, Lyon 690, Marseille 130, Toulouse 310, Lille 590",
        lambda rng, prefix: f"{prefix}{rng.randint(1, 9):02d}",
        lambda rng: f"+33 {rng.choice('67')} " + " ".join(_digits(rng, 2) for _ in range(4)),
    ),
    _country(
        "DE",
        0.15,
        "Jürgen, Björn, Günther, Lena, Anna, Maximilian, Sophie, Jonas, Käthe, Felix",
        "Müller, Schröder, Weiß, Schmidt, Fischer, Becker, Hoffmann, Krüger, Wagner, Koch",
        "Berlin 101, München 803, Hamburg 200, Köln 506, Frankfurt 603",
        lambda rng, prefix: prefix + _digits(rng, 2),
        lambda rng: f"+49 15{_digits(rng, 1)} {_digits(rng, 8)}",
    ),
    _country(
        "ES",
        0.10,
        "José, María, Lucía, Sofía, Javier, Álvaro, Carmen, Pablo, Nuria, Andrés",
        "García, Martínez, Núñez, Peña, López, Sánchez, Pérez, Gómez, Díaz, Ruiz",
        "Madrid 280, Barcelona 080, Valencia 460, Sevilla 410, Bilbao 480",
        lambda rng, prefix: prefix + _digits(rng, 2),
        lambda rng: f"+34 6{_digits(rng, 2)} {_digits(rng, 3)} {_digits(rng, 3)}",
    ),
    _country(
        "NL",
        0.07,
        "Daan, Sanne, Sem, Fleur, Lotte, Bram, Noor, Thijs, Eva, Ruben",
        "de Vries, van den Berg, Jansen, Bakker, Visser, Smit, de Jong, Mulder, Bos, Dekker",
        "Amsterdam 10, Rotterdam 30, Utrecht 35, Den Haag 25, Eindhoven 56",
        lambda rng, prefix: f"{prefix}{_digits(rng, 2)} {_letters(rng, 2)}",
        lambda rng: f"+31 6 {_digits(rng, 8)}",
    ),
    _country(
        "US",
        0.20,
        "James, Mary, Olivia, Liam, Emma, Noah, Ava, Ethan, Mia, Logan",
        "Smith, Johnson, Williams, Brown, Jones, Miller, Davis, O'Brien, Wilson, Moore",
        "New York 100, San Francisco 941, Chicago 606, Austin 787, Boston 021",
        lambda rng, prefix: prefix + _digits(rng, 2),
        # 555-01xx numbers are reserved for fiction.
        lambda rng: f"+1 {rng.choice(('212', '415', '312', '512', '617'))} 555 01{_digits(rng, 2)}",
    ),
    _country(
        "GB",
        0.10,
        "Oliver, Amelia, George, Isla, Harry, Freya, Jack, Poppy, Siobhán, Rhys",
        "Taylor, Evans, Thomas, Roberts, Walker, Wright, Hughes, O'Connor, Green, Hall",
        "London SW1A, Manchester M1, Edinburgh EH1, Bristol BS1, Leeds LS1",
        lambda rng, prefix: f"{prefix} {_digits(rng, 1)}{_letters(rng, 2)}",
        # 07700 900xxx numbers are reserved for drama.
        lambda rng: f"+44 7700 900{_digits(rng, 3)}",
    ),
    _country(
        "CH",
        0.05,
        "Luca, Léa, Noah, Mia, Elias, Lina, Nils, Zoë, Jana, Loïc",
        "Meier, Keller, Brunner, Baumann, Frei, Zürcher, Favre, Rochat, Bühler, Moser",
        "Zürich 80, Genève 12, Basel 40, Lausanne 10, Bern 30",
        lambda rng, prefix: prefix + _digits(rng, 2),
        lambda rng: f"+41 7{rng.choice('6789')} {_digits(rng, 3)} {_digits(rng, 2)} {_digits(rng, 2)}",
    ),
)
_COUNTRY_WEIGHTS = tuple(country.weight for country in COUNTRIES)


def _ascii(text: str) -> str:
    """``"Niccolò D'Angelo"`` → ``"niccolodangelo"``: what people type in email addresses."""
    plain = unicodedata.normalize("NFKD", text.replace("ß", "ss")).encode("ascii", "ignore").decode()
    return "".join(ch for ch in plain.lower() if ch.isalnum())


def _email(rng: random.Random, first: str, last: str, number: int) -> str:
    """A lowercase address, unique because it ends with the profile's number."""
    f, la = _ascii(first), _ascii(last)
    local = rng.choice((f"{f}.{la}", f"{f[0]}{la}", f"{f}_{la}", f"{la}.{f}", f"{f}{la}"))
    return f"{local}{number}@{rng.choice(DOMAINS)}"


def _messy(rng: random.Random, email: str) -> str:
    """The same address as typed again: different case and/or surrounding whitespace."""
    local, _, domain = email.partition("@")
    styles = (
        lambda: f"{local.title()}@{domain.title()}",
        lambda: email.upper(),
        lambda: f"{local.capitalize()}@{domain}",
    )
    cased = rng.choice(styles)()
    pad = rng.choice(("", " ", "  ", "\t"))
    return rng.choice((f"{pad} {cased}", f"{cased} {pad}", f" {cased} "))


def _plan_and_value(rng: random.Random) -> tuple[str, float, int]:
    plan = rng.choices([p for p, _ in PLANS], weights=[w for _, w in PLANS])[0]
    median = PLAN_VALUE[plan]
    if median == 0:
        value = round(rng.choice((0.0, 0.0, 0.0, rng.uniform(1, 40))), 2)
    else:
        value = round(median * rng.lognormvariate(0, 0.8), 2)
    vip_share = VIP_SHARE * (6 if plan == "enterprise" else 1)
    return plan, value, int(rng.random() < vip_share)


def _updated_at(rng: random.Random) -> str:
    moment = UPDATED_FROM + timedelta(seconds=rng.randrange(UPDATED_SPAN))
    return moment.isoformat(timespec="seconds")


def generate_profiles(count: int, seed: int = 7) -> Iterator[Profile]:
    """Yield ``count`` profiles, ``p00001`` first; the same ``seed`` always yields the same rows."""
    rng = random.Random(seed)
    width = max(5, len(str(count)))
    recent: deque[tuple[str, str, str]] = deque(maxlen=500)  # (email, first, last) to duplicate
    for number in range(1, count + 1):
        country = rng.choices(COUNTRIES, weights=_COUNTRY_WEIGHTS)[0]
        first, last = rng.choice(country.first_names), rng.choice(country.last_names)
        draw = rng.random()
        email: str | None
        if draw < NULL_EMAIL_SHARE:
            email = None
        elif draw < NULL_EMAIL_SHARE + EMPTY_EMAIL_SHARE:
            email = ""
        elif draw < NULL_EMAIL_SHARE + EMPTY_EMAIL_SHARE + DUPLICATE_EMAIL_SHARE and recent:
            original, first, last = rng.choice(recent)
            email = _messy(rng, original)
        else:
            email = _email(rng, first, last, number)
            recent.append((email, first, last))
        phone = None if rng.random() < NULL_PHONE_SHARE else country.phone(rng)
        city: str | None
        city, prefix = rng.choice(country.cities)
        postal: str | None = country.postal(rng, prefix)
        if rng.random() < NO_ADDRESS_SHARE:
            city = postal = None
        plan, value, vip = _plan_and_value(rng)
        yield Profile(
            f"p{number:0{width}d}",
            email,
            first,
            last,
            phone,
            country.code,
            city,
            postal,
            plan,
            value,
            vip,
            _updated_at(rng),
        )


def _chunks(rows: Iterable[Profile], size: int) -> Iterator[list[Profile]]:
    iterator = iter(rows)
    while chunk := list(islice(iterator, size)):
        yield chunk


def write_sqlite_warehouse(path: str | Path, profiles: int = 1000, seed: int = 7) -> int:
    """(Re)create table ``customer_profiles`` in the SQLite file ``path``; return the rows written.

    An existing ``customer_profiles`` table is replaced; other tables in the file are kept.
    """
    if profiles < 0:
        raise ValueError("profiles must be zero or more")
    insert = f"INSERT INTO {TABLE} ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
    written = 0
    with closing(sqlite3.connect(path)) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {TABLE}")
        conn.execute(CREATE_TABLE)
        for chunk in _chunks(generate_profiles(profiles, seed), CHUNK_SIZE):
            conn.executemany(insert, chunk)
            written += len(chunk)
        conn.commit()
    return written
