"""``[core] hostname_callable`` for the Celery test's workers.

Two workers on one machine share its hostname; each worker process gets ``E2E_WORKER_NAME`` so
the hostname Airflow records on every task instance says which worker ran it, as it would for
workers on two machines.
"""

from __future__ import annotations

import os
import socket


def hostname() -> str:
    return os.environ.get("E2E_WORKER_NAME") or socket.getfqdn()
