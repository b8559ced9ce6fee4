"""The provider's Airflow plugin: the "Stripe pipelines" page (``plugin.py`` registers it, ``app.py``
serves it, ``queries.py`` reads specs and run history without Airflow)."""
