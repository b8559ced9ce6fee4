"""The four steps chained as the DAG chains them, on an SQLite warehouse and localstripe: what a
run leaves in its folder, and what an upsert cleared after success says."""

from __future__ import annotations

import dataclasses
import json
import logging
import sqlite3
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from airflow.sdk import ObjectStoragePath

from krenalis_airflow.core.dedupe import KEPT_FIRST
from krenalis_airflow.core.sample_data import write_sqlite_warehouse
from krenalis_airflow.core.spec import load_spec
from krenalis_airflow.exceptions import RunFailed
from krenalis_airflow.operators import steps
from krenalis_airflow.operators.storage import keep_files
from support.fault_proxy import FaultProxy
from support.localstripe_process import STRIPE_TEST_KEY

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "dags" / "pipelines" / "sample_customers.yaml"
PROFILE_FILES = {"profiles.jsonl", "records.jsonl", "deduped.jsonl"}


@pytest.fixture
def run_steps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stripe_conn_env: str
) -> Callable[..., tuple[steps.StepRun, dict[str, Any]]]:
    warehouse = tmp_path / "warehouse.sqlite"
    write_sqlite_warehouse(warehouse, profiles=150)
    monkeypatch.setenv("AIRFLOW_CONN_WAREHOUSE", json.dumps({"conn_type": "sqlite", "host": str(warehouse)}))
    monkeypatch.delenv("KRENALIS_KEEP_FILES", raising=False)

    def run(spec_text: str | None = None) -> tuple[steps.StepRun, dict[str, Any]]:
        spec_file = SAMPLE
        if spec_text is not None:
            spec_file = tmp_path / "pipelines" / "sample_customers.yaml"
            spec_file.parent.mkdir(exist_ok=True)
            spec_file.write_text(spec_text)
        folder = tmp_path / "storage" / "run"
        folder.mkdir(parents=True, exist_ok=True)
        run = steps.StepRun(
            spec=load_spec(spec_file),
            spec_file=str(spec_file),
            folder=ObjectStoragePath(f"file://{folder}"),
            upstream={},
            dry_run=False,
            full_resync=False,
            log=logging.getLogger("test_steps"),
        )
        upstream: dict[str, Any] = {}
        for step in (steps.extract, steps.transform, steps.dedupe):
            upstream = step(dataclasses.replace(run, upstream=upstream))
        return dataclasses.replace(run, upstream=upstream), upstream

    return run


def names(run: steps.StepRun) -> set[str]:
    return {path.name for path in Path(run.folder.path).iterdir()}


def test_a_successful_run_removes_its_profile_files_and_keeps_summary_and_rejections(run_steps) -> None:
    run, _ = run_steps()
    summary = steps.upsert(run)
    assert summary["created"] > 10 and summary["outcome"] == "success"
    assert summary["retried"] == {}  # localstripe never answers 429
    left = names(run)
    assert not left & PROFILE_FILES
    assert {
        "summary.json",
        "rejected-transform.jsonl",
        "rejected-dedupe.jsonl",
        "rejected-upsert.jsonl",
    } <= left

    with pytest.raises(RunFailed, match=r"deduped\.jsonl is gone: .* clear the whole DAG run"):
        steps.upsert(run)  # the upsert task cleared alone, after its success


def test_keep_files_keeps_them(run_steps, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KRENALIS_KEEP_FILES", "true")
    run, _ = run_steps()
    steps.upsert(run)
    assert names(run) >= PROFILE_FILES


def test_a_failed_run_keeps_its_files_for_the_retry(run_steps) -> None:
    text = SAMPLE.read_text().replace(
        "  duplicate_customers: reject\n", "  duplicate_customers: reject\n  max_rejected: 0\n"
    )
    run, upstream = run_steps(text)
    assert upstream["rejected"], "the sample warehouse has profiles to reject"
    with pytest.raises(RunFailed, match=r"exceed export\.max_rejected"):
        steps.upsert(run)
    assert names(run) >= PROFILE_FILES


@pytest.mark.parametrize(("value", "kept"), [("true", True), ("1", True), ("False", False), ("no", False)])
def test_keep_files_setting(monkeypatch: pytest.MonkeyPatch, value: str, kept: bool) -> None:
    monkeypatch.setenv("KRENALIS_KEEP_FILES", value)
    assert keep_files() is kept


def test_a_bad_keep_files_setting_names_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KRENALIS_KEEP_FILES", "sometimes")
    with pytest.raises(
        ValueError, match=r"KRENALIS_KEEP_FILES / \[krenalis\] keep_files must be true or false"
    ):
        keep_files()


def test_a_bad_keep_files_setting_fails_the_upsert_before_anything_is_sent(
    run_steps, monkeypatch: pytest.MonkeyPatch, stripe_client
) -> None:
    run, _ = run_steps()
    monkeypatch.setenv("KRENALIS_KEEP_FILES", "sometimes")
    with pytest.raises(ValueError, match="keep_files must be true or false"):
        steps.upsert(run)
    assert stripe_client.v1.customers.list(params={"limit": 1}).data == []
    assert names(run) >= PROFILE_FILES


def test_the_summary_counts_the_calls_retried_after_transient_errors(
    run_steps, fault_proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    run, _ = run_steps()
    conn = {"conn_type": "stripe", "password": STRIPE_TEST_KEY, "host": fault_proxy.url}
    monkeypatch.setenv("AIRFLOW_CONN_STRIPE_DEFAULT", json.dumps(conn))
    fault_proxy.burst_5xx(2, status=503)
    fault_proxy.fail_next(1, "rate_limit")
    summary = steps.upsert(run)
    assert summary["retried"] == {"HTTP 503": 2, "rate limited": 1}
    assert (summary["failed"], summary["outcome"]) == (0, "success")
    assert summary["created"] > 10


# --------------------------------------------------------------------------------------------
# Nested outputs: JavaScript and Python may give address, shipping and metadata as objects, and
# a run then does exactly what the dotted form of the same output does.

TRANSFORMATIONS = {
    ("javascript", "dotted"): """\
function transform(p) {
  var out = {
    name: p.first_name + ' ' + p.last_name,
    phone: p.phone,
    'shipping.name': p.first_name,
    'shipping.address.line1': 'Via ' + p.last_name + ' 1',
    'shipping.address.country': p.country,
    'metadata.plan': p.plan,
    'metadata.profile_id': p.profile_id,
    'metadata.lifetime_value': p.lifetime_value
  };
  var parts = ['line1', 'line2', 'city', 'state', 'postal_code', 'country'];
  if (p.city === null) {
    for (var i = 0; i < parts.length; i++) { out['address.' + parts[i]] = null; }
  } else {
    out['address.city'] = p.city;
    out['address.postal_code'] = p.postal_code;
    out['address.country'] = p.country;
  }
  return out;
}
""",
    ("javascript", "nested"): """\
function transform(p) {
  return {
    name: p.first_name + ' ' + p.last_name,
    phone: p.phone,
    address: p.city === null ? null : {city: p.city, postal_code: p.postal_code, country: p.country},
    shipping: {name: p.first_name, address: {line1: 'Via ' + p.last_name + ' 1', country: p.country}},
    metadata: {plan: p.plan, profile_id: p.profile_id, lifetime_value: p.lifetime_value}
  };
}
""",
    ("python", "dotted"): """\
def transform(p):
    out = {
        "name": p["first_name"] + " " + p["last_name"],
        "phone": p["phone"],
        "shipping.name": p["first_name"],
        "shipping.address.line1": "Via " + p["last_name"] + " 1",
        "shipping.address.country": p["country"],
        "metadata.plan": p["plan"],
        "metadata.profile_id": p["profile_id"],
        "metadata.lifetime_value": p["lifetime_value"],
    }
    if p["city"] is None:
        parts = ("line1", "line2", "city", "state", "postal_code", "country")
        out.update({"address." + part: None for part in parts})
    else:
        out.update(
            {"address.city": p["city"], "address.postal_code": p["postal_code"], "address.country": p["country"]}
        )
    return out
""",
    ("python", "nested"): """\
def transform(p):
    address = None
    if p["city"] is not None:
        address = {"city": p["city"], "postal_code": p["postal_code"], "country": p["country"]}
    return {
        "name": p["first_name"] + " " + p["last_name"],
        "phone": p["phone"],
        "address": address,
        "shipping.address": {"line1": "Via " + p["last_name"] + " 1", "country": p["country"]},
        "shipping.name": p["first_name"],
        "metadata": {"plan": p["plan"], "profile_id": p["profile_id"], "lifetime_value": p["lifetime_value"]},
    }
""",
}


def spec_with(language: str, form: str) -> str:
    """The sample spec with one of TRANSFORMATIONS, and a ledger of its own per form."""
    text = SAMPLE.read_text()
    code = textwrap.indent(TRANSFORMATIONS[language, form], "    ")
    return (
        text[: text.index("transformation:")]
        + f"transformation:\n  {language}: |\n{code}"
        + f"state:\n  table_prefix: {form}_\n"
    )


def ledger_rows(warehouse: Path, prefix: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(warehouse) as db:
        return db.execute(
            f"SELECT profile_key, match_value, payload_hash, field_hashes, status FROM {prefix}ledger "
            "ORDER BY profile_key"
        ).fetchall()


def stripe_customers(client: Any) -> list[dict[str, Any]]:
    """What Stripe holds, without what Stripe makes up (ids, timestamps)."""
    found = [c.to_dict() for c in client.v1.customers.list(params={"limit": 100}).auto_paging_iter()]
    fields = ("email", "name", "phone", "address", "shipping", "metadata")
    return sorted(({field: c.get(field) for field in fields} for c in found), key=lambda c: c["email"])


@pytest.mark.parametrize("language", ["javascript", "python"])
def test_a_nested_output_syncs_exactly_as_its_dotted_form(
    run_steps, language: str, localstripe, stripe_client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if language == "javascript":
        pytest.importorskip("pyduktape2")
    monkeypatch.setenv("KRENALIS_KEEP_FILES", "true")  # to compare the records too
    seen: dict[str, dict[str, Any]] = {}
    for form in ("dotted", "nested"):
        localstripe.flush()
        run, upstream = run_steps(spec_with(language, form))
        summary = steps.upsert(run)
        assert summary["outcome"] == "success"
        with ObjectStoragePath(upstream["records"]).open() as records:
            # Without the input digest: it is seeded with the spec, which differs between the forms.
            payloads = sorted(
                ({k: v for k, v in json.loads(line).items() if k != "input"} for line in records),
                key=lambda r: r["key"],
            )
        seen[form] = {
            "counts": {k: summary[k] for k in ("transformed", "rejected", "created", "updated", "api_calls")},
            "records": payloads,
            "customers": stripe_customers(stripe_client),
            "ledger": ledger_rows(tmp_path / "warehouse.sqlite", f"{form}_"),
        }
    dotted, nested = seen["dotted"], seen["nested"]
    assert nested["counts"] == dotted["counts"]
    assert dotted["counts"]["created"] > 10 and dotted["counts"]["rejected"].get("invalid output") is None
    assert nested["records"] == dotted["records"]
    assert nested["customers"] == dotted["customers"]
    assert nested["ledger"] == dotted["ledger"] and len(nested["ledger"]) == dotted["counts"]["created"]

    cleared = [r for r in nested["records"] if "address.line1" in r["payload"]]  # address: null
    assert cleared and all(r["payload"]["address.line1"] is None for r in cleared)
    customers = nested["customers"]
    assert all(c["shipping"]["address"]["line1"].startswith("Via ") for c in customers)
    assert all(set(c["metadata"]) == {"plan", "profile_id", "lifetime_value"} for c in customers)
    assert any(c["address"] and c["address"]["city"] for c in customers)

    run, _ = run_steps(spec_with(language, "nested"))
    rerun = steps.upsert(run)
    assert (rerun["created"], rerun["updated"], rerun["api_calls"]) == (0, 0, {})


# --------------------------------------------------------------------------------------------
# What turns a run red: rejections (problems) count against export.max_rejected, skips (the
# spec's own rules at work) are counted by reason and never do.


def test_keep_first_duplicates_are_skipped_with_their_reason_not_rejected(run_steps, tmp_path: Path) -> None:
    run_steps()  # builds the warehouse; now every profile gets a copy, older, with its email in capitals
    with sqlite3.connect(tmp_path / "warehouse.sqlite") as db:
        db.execute("CREATE TEMP TABLE copies AS SELECT * FROM customer_profiles")
        db.execute(
            "UPDATE copies SET profile_id = profile_id || '-copy', email = upper(email), updated_at = NULL"
        )
        db.execute("INSERT INTO customer_profiles SELECT * FROM copies")
    run, upstream = run_steps()  # the sample spec: duplicate_profiles: keep_first, newest first
    assert upstream["duplicates"] == upstream["transformed"] // 2 > 0
    assert upstream["skipped"] == {KEPT_FIRST: upstream["duplicates"]}
    assert "duplicate profile" not in upstream["rejected"]
    assert Path(run.file("rejected-dedupe.jsonl").path).read_text() == ""
    summary = steps.upsert(run)  # half the profiles skipped, far above max_rejected (10%): still a success
    assert summary["outcome"] == "success" and summary["created"] == upstream["duplicates"]
    assert summary["skipped"][KEPT_FIRST] == upstream["duplicates"]
    assert summary["skipped_total"] == sum(summary["skipped"].values())
    assert summary["rejected_total"] == sum(upstream["rejected"].values())
    assert any("kept first" in sample for sample in summary["samples"]["skipped"])
    written = json.loads(Path(run.file("summary.json").path).read_text())
    assert written["skipped"] == summary["skipped"]
