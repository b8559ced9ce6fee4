"""Development support shared by the tests, the benchmarks and the demo: localstripe in a child
process (``localstripe_process.py``, ``localstripe_server.py``), Stripe's contract for the customer
endpoints (``stripe_contract.py``) and the fault proxy (``fault_proxy.py``).

Not part of the provider: ``setup.cfg`` packages ``krenalis_airflow`` only, so the wheel leaves
this folder out.
"""
