"""krenalis_airflow: keep Stripe customers in sync with customer profiles in a SQL warehouse."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def get_provider_info() -> dict[str, Any]:
    """Provider metadata read by Airflow's ProvidersManager (entry point ``apache_airflow_provider``).

    Connection form fields are declared here (``conn-fields``/``ui-field-behaviour``): since
    Airflow 3.2 hook-level form methods are ignored unless the FAB provider is installed.
    """
    return {
        "package-name": "krenalis-airflow",
        "name": "Krenalis",
        "description": "Sync customer profiles from a SQL warehouse to Stripe customers.",
        "versions": [__version__],
        # Airflow 3.3 replaces this with the distribution's "Documentation" Project-URL, if any.
        "documentation-url": "https://pypi.org/project/krenalis-airflow/",
        "integrations": [
            {
                "integration-name": "Stripe",
                "external-doc-url": "https://docs.stripe.com/api/customers",
                "tags": ["service"],
            }
        ],
        "hooks": [{"integration-name": "Stripe", "python-modules": ["krenalis_airflow.hooks.stripe"]}],
        "operators": [
            {
                "integration-name": "Stripe",
                "python-modules": ["krenalis_airflow.operators.profile_export"],
            }
        ],
        "connection-types": [
            {
                "hook-class-name": "krenalis_airflow.hooks.stripe.StripeHook",
                "hook-name": "Stripe",
                "connection-type": "stripe",
                "conn-fields": {
                    "max_network_retries": {
                        "label": "Max network retries",
                        "schema": {"type": ["integer", "null"], "default": 4},
                        "description": "How often a request that failed for a transient reason (429, 5xx, network) is retried.",
                    },
                    "timeout": {
                        "label": "Request timeout (seconds)",
                        "schema": {"type": ["number", "null"], "default": 80},
                    },
                    "rate_limit": {
                        "label": "Rate limit (requests/s, whole account)",
                        "schema": {"type": ["number", "null"]},
                        "description": "Default: 25 for test keys, 100 for live keys (Stripe's limits).",
                    },
                    "endpoint_rate_limit": {
                        "label": "Rate limit per endpoint (requests/s)",
                        "schema": {"type": ["number", "null"]},
                        "description": "Default: 25 (Stripe's default per-endpoint limit).",
                    },
                },
                "ui-field-behaviour": {
                    "hidden-fields": ["schema", "port", "login", "extra"],
                    "relabeling": {"password": "API key", "host": "API base URL"},
                    "placeholders": {
                        "password": "sk_test_… or rk_test_… (a restricted key with Customers: write)",
                        "host": "empty for https://api.stripe.com; http://127.0.0.1:8420 for localstripe",
                    },
                },
            }
        ],
        # `airflow config list --section krenalis`. The code reads KRENALIS_<OPTION> first, then
        # [krenalis] <option> (AIRFLOW__KRENALIS__<OPTION>): see operators/storage.py.
        "config": {
            "krenalis": {
                "description": "Settings of the Krenalis provider (Stripe customer sync). Each option can "
                "also be set with the environment variable KRENALIS_<OPTION>, which takes precedence.",
                "options": {
                    "storage_base": {
                        "description": "Where each run's files live: <base>/<dag_id>/<run_id>/. Any "
                        "ObjectStoragePath URL; with several workers it must be storage they all "
                        "share (object storage, naming the connection before the @). Empty: "
                        "file://$AIRFLOW_HOME/krenalis. Environment variable: KRENALIS_STORAGE_BASE.",
                        "version_added": "0.1.0",
                        "type": "string",
                        "example": "s3://aws_default@my-bucket/krenalis",
                        "default": None,
                    },
                    "keep_files": {
                        "description": "Keep the profile files (whole profiles: personal data) of "
                        "successful runs; by default they are deleted once the upsert succeeds. "
                        "Environment variable: KRENALIS_KEEP_FILES.",
                        "version_added": "0.1.0",
                        "type": "boolean",
                        "example": "True",
                        "default": "False",
                    },
                },
            }
        },
    }
