"""Pipeline specs for the end-to-end deployments.

Pipelines of one deployment share one warehouse and one localstripe, so each selects its own
countries (disjoint profiles) and stamps ``metadata.pipeline`` on what it writes; only the sample
pipeline matches by email, and the others never write an email, so none can match another's
customers.
"""

from __future__ import annotations

from tests.e2e.deployment import ROOT
from tests.specs import spec_text

SAMPLE = ROOT / "dags" / "pipelines" / "sample_customers.yaml"
SAMPLE_COUNTRIES = ("IT", "FR", "DE", "ES", "NL")


def sample(*, enabled: bool = True, schedule: str = "1h") -> str:
    """The shipped sample spec (id ``sample_customers``), with ``enabled``/``schedule`` changed."""
    text = SAMPLE.read_text()
    assert "\nenabled: true\n" in text and "\nschedule: 1h\n" in text, "the sample spec changed shape"
    text = text.replace("\nenabled: true\n", f"\nenabled: {str(enabled).lower()}\n")
    text = text.replace("\nschedule: 1h\n", f"\nschedule: {schedule}\n")
    return text.replace(
        "    metadata.plan: plan\n",
        "    metadata.plan: plan\n    metadata.pipeline: \"'sample_customers'\"\n",
    )


def by_country(
    pipeline_id: str,
    country: str,
    *,
    description: str,
    enabled: bool = True,
    schedule: str = "null",
    tags: tuple[str, ...] = ("e2e",),
) -> str:
    """A small pipeline over one country's profiles, matched on ``metadata.profile_id``."""
    return f"""\
id: {pipeline_id}
description: {description}
enabled: {str(enabled).lower()}
schedule: {schedule}
tags: [{", ".join(tags)}]
source: {{conn_id: warehouse, table: customer_profiles, key: profile_id}}
filter:
  logical: and
  conditions:
    - {{property: country, operator: is, values: [{country}]}}
export:
  matching: {{property: profile_id, stripe: metadata.profile_id}}
transformation:
  mapping:
    name: first_name ~ ' ' ~ last_name
    metadata.plan: plan
    metadata.pipeline: "'{pipeline_id}'"
"""


# A typo in a Stripe field (line 8): the spec does not load.
BROKEN = spec_text("invalid/broken_pipeline")
BROKEN_FILE = "broken_pipeline.yaml"  # the file name is the pipeline id
BROKEN_MESSAGE = f"{BROKEN_FILE}:8: transformation.mapping.adress.city: unknown Stripe customer field"
