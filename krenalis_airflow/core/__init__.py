"""The pure core: spec model, filters, transformations, dedupe, ledger and the sync engine.

Nothing under this package may import ``airflow``; ``tests/core/test_purity.py`` proves it in a
clean interpreter. The Airflow shell (hooks, operators, DAG factory) only wires these to Airflow.
"""
