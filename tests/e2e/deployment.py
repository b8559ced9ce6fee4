"""A real Airflow deployment for end-to-end tests: api-server, scheduler, dag-processor (and, for
Celery, workers) as child processes on loopback, a fresh PostgreSQL metadata database, and a
client for the REST API the UI uses.

Every process runs in its own process group with its output in a log file, and is stopped with
SIGTERM then SIGKILL on its whole group. Every wait is bounded and fails fast when a component
dies, quoting the end of its log. Only 127.0.0.1 is ever bound: the log servers that the scheduler
and Celery workers would start on all interfaces are switched off (``--skip-serve-logs``); task
logs are files under each component's ``AIRFLOW_HOME``.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import httpx
import psycopg2
from psycopg2 import sql

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
AIRFLOW = str(BIN / "airflow")
ARTIFACTS = ROOT / "test-artifacts" / "e2e"
PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}
ADMIN = "admin"
# The FAB auth manager (apache-airflow-providers-fab, the e2e extra); ``use_fab`` switches to it.
FAB_AUTH_MANAGER = "airflow.providers.fab.auth_manager.fab_auth_manager.FabAuthManager"
T = TypeVar("T")


class DeploymentError(AssertionError):
    """A component died, or something did not happen in time."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(
    what: str,
    probe: Callable[[], T | None],
    *,
    timeout: float,
    interval: float = 1.0,
    check: Callable[[], None] | None = None,
) -> T:
    """Call ``probe`` until it returns something truthy; ``check`` raises if waiting is pointless."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        if check is not None:
            check()
        try:
            last = probe()
        except (httpx.HTTPError, OSError) as exc:  # a server still starting, a transient error
            last = exc
        else:
            if last:
                return last
        if time.monotonic() > deadline:
            raise DeploymentError(f"timed out after {timeout:.0f}s waiting for {what}; last seen: {last!r}")
        time.sleep(interval)


# --- PostgreSQL ---------------------------------------------------------------------------------


def _pg_admin() -> Any:
    conn = psycopg2.connect(dbname="postgres", **PG)
    conn.autocommit = True
    return conn


def create_database(prefix: str) -> str:
    """A new, uniquely named database (``<prefix>_<random>``)."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    conn = _pg_admin()
    try:
        with conn.cursor() as cur:
            cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    finally:
        conn.close()
    return name


def drop_database(name: str) -> None:
    conn = _pg_admin()
    try:
        with conn.cursor() as cur:
            cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    finally:
        conn.close()


def sqlalchemy_url(database: str) -> str:
    return f"postgresql+psycopg2://{PG['user']}@{PG['host']}:{PG['port']}/{database}"


def clean_env(extra: Mapping[str, str]) -> dict[str, str]:
    """This process's environment without Airflow/Krenalis settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "KRENALIS", "_AIRFLOW"))}
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


def create_metadata_database(prefix: str = "krenalis_e2e") -> str:
    """A fresh database migrated by ``airflow db migrate`` (a few seconds on PostgreSQL). With the
    FAB provider installed this creates its tables (``ab_*``) too, whichever auth manager runs:
    Airflow 3.3 migrates the DB managers of installed providers (no ``airflow fab-db migrate``)."""
    name = create_database(prefix)
    home = Path(os.environ.get("TMPDIR", "/tmp")) / f"airflow-migrate-{name}"
    home.mkdir(parents=True)
    try:
        env = clean_env(
            {
                "AIRFLOW_HOME": str(home),
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": sqlalchemy_url(name),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            }
        )
        result = subprocess.run(
            [AIRFLOW, "db", "migrate"], env=env, capture_output=True, text=True, timeout=600
        )
    finally:
        shutil.rmtree(home, ignore_errors=True)
    if result.returncode:
        drop_database(name)
        raise DeploymentError(f"airflow db migrate failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return name


# --- processes ----------------------------------------------------------------------------------


class Component:
    """One long-running child process in its own process group, its output in ``log``."""

    def __init__(self, name: str, args: list[str], env: Mapping[str, str], log: Path, cwd: Path) -> None:
        self.name = name
        self.log = log
        self._out = log.open("ab")
        self.process = subprocess.Popen(
            args,
            env=dict(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def alive(self) -> bool:
        return self.process.poll() is None

    def tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 20.0) -> None:
        if self.alive():
            self._signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.process.wait(timeout=10)
        # children that outlived their parent (task runners, celery pool) share its group
        self._signal(signal.SIGKILL)
        self._out.close()

    def _signal(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, sig)


# --- the REST API -------------------------------------------------------------------------------


class Api:
    """The REST API the UI uses (``/api/v2``, ``/ui``), authenticated as a user of the simple or the
    FAB auth manager (both hand out a JWT at ``POST /auth/token`` for a username and password)."""

    def __init__(self, base_url: str, password: str, username: str = ADMIN) -> None:
        self.base_url = base_url
        self.http = httpx.Client(base_url=base_url, timeout=30.0)
        response = self.http.post("/auth/token", json={"username": username, "password": password})
        if response.status_code != 201:
            raise DeploymentError(f"POST /auth/token: {response.status_code} {response.text}")
        self.http.headers["Authorization"] = f"Bearer {response.json()['access_token']}"

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.http.request(method, path, **kwargs)
        if response.status_code >= 400:
            raise DeploymentError(f"{method} {path}: {response.status_code} {response.text[:2000]}")
        return response.json() if response.content else None

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params=params or None)

    def dags(self) -> dict[str, dict[str, Any]]:
        found = self.get("/api/v2/dags", limit=100)
        return {d["dag_id"]: d for d in found["dags"]}

    def import_errors(self) -> list[dict[str, Any]]:
        return list(self.get("/api/v2/importErrors", limit=100)["import_errors"])

    def set_paused(self, dag_id: str, paused: bool) -> dict[str, Any]:
        return dict(self.request("PATCH", f"/api/v2/dags/{dag_id}", json={"is_paused": paused}))

    def trigger(self, dag_id: str, conf: dict[str, Any] | None = None) -> str:
        run = self.request(
            "POST", f"/api/v2/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": conf or {}}
        )
        return str(run["dag_run_id"])

    def runs(self, dag_id: str) -> list[dict[str, Any]]:
        return list(self.get(f"/api/v2/dags/{dag_id}/dagRuns", limit=100, order_by="run_after")["dag_runs"])

    def run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        return dict(self.get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}"))

    def task_instances(self, dag_id: str, run_id: str) -> dict[str, dict[str, Any]]:
        found = self.get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances")["task_instances"]
        return {ti["task_id"]: ti for ti in found}

    def task_log(self, dag_id: str, run_id: str, task_id: str, try_number: int = 1) -> str:
        """The task's log as the UI shows it (its structured events, as JSON text)."""
        path = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{try_number}"
        return json.dumps(self.get(path, full_content=True)["content"])

    def xcom(self, dag_id: str, run_id: str, task_id: str) -> Any:
        entry = self.get(
            f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/return_value",
            deserialize=True,
        )
        value = entry["value"]
        return json.loads(value) if isinstance(value, str) else value


# --- the deployment -----------------------------------------------------------------------------

FINISHED = {"success", "failed"}


class AirflowDeployment:
    """Airflow 3 on loopback: api-server, scheduler and dag-processor (``start``), plus any extra
    component (``add_component``, e.g. Celery workers). ``env`` holds connections and settings
    shared by every component; each component may get its own ``AIRFLOW_HOME``."""

    def __init__(
        self,
        root: Path,
        *,
        name: str,
        database: str,
        dags_folder: Path,
        env: Mapping[str, str],
        executor: str = "LocalExecutor",
    ) -> None:
        self.root = root
        self.name = name
        self.database = database
        self.home = root / "airflow-home"
        self.logs = root / "process-logs"
        self.home.mkdir(parents=True)
        self.logs.mkdir()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.password = secrets.token_urlsafe(12)
        passwords = self.home / "simple_auth_manager_passwords.json"
        passwords.write_text(json.dumps({ADMIN: self.password}))
        self.passwords = {ADMIN: self.password}  # more with add_user
        self.base_path = ""  # "/prefix" with an [api] base_url that has a path (set_base_path)
        from cryptography.fernet import Fernet

        self.env = clean_env(
            {
                "AIRFLOW_HOME": str(self.home),
                "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__EXECUTOR": executor,
                "AIRFLOW__CORE__PARALLELISM": "4",
                "AIRFLOW__CORE__FERNET_KEY": Fernet.generate_key().decode(),
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.url}/execution/",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN}:admin",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": sqlalchemy_url(database),
                "AIRFLOW__API__HOST": "127.0.0.1",
                "AIRFLOW__API__PORT": str(self.port),
                "AIRFLOW__API__BASE_URL": self.url,
                "AIRFLOW__API__WORKERS": "1",
                "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(24),
                "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
                # find spec and DAG-file changes within seconds, not minutes
                "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
                "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "10",
                "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
                "AIRFLOW__DAG_PROCESSOR__PRINT_STATS_INTERVAL": "0",
                "AIRFLOW__CORE__MIN_SERIALIZED_DAG_UPDATE_INTERVAL": "5",
                "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
                **env,
            }
        )
        self.components: list[Component] = []
        self.homes: list[Path] = [self.home]
        self._api: Api | None = None

    # -- lifecycle

    def set_base_path(self, path: str) -> None:
        """Serve Airflow under ``path`` (``[api] base_url`` with a path, as behind a proxy that
        keeps the prefix), before ``start``; the REST clients and ``ui_url`` follow it."""
        self.base_path = path.rstrip("/")
        self.env["AIRFLOW__API__BASE_URL"] = self.url + self.base_path
        self.env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] = f"{self.url}{self.base_path}/execution/"

    @property
    def ui_url(self) -> str:
        """The UI's address (with the base path, if any)."""
        return self.url + self.base_path

    def add_user(self, name: str, role: str) -> str:
        """Another user of the simple auth manager (``viewer``, ``user``, ``op`` or ``admin``),
        before ``start``; returns the password."""
        password = secrets.token_urlsafe(12)
        self.passwords[name] = password
        (self.home / "simple_auth_manager_passwords.json").write_text(json.dumps(self.passwords))
        users = self.env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"]
        self.env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"] = f"{users},{name}:{role}"
        return password

    def use_fab(self) -> None:
        """Run the FAB auth manager instead of the simple one, before ``start`` (its tables come
        with ``create_metadata_database``): ``admin`` gets FAB's ``Admin`` role and ``password``,
        created with FAB's CLI. More users and roles once started: ``add_fab_user``, ``add_fab_role``."""
        self.env["AIRFLOW__CORE__AUTH_MANAGER"] = FAB_AUTH_MANAGER
        args = ["users", "create", "--username", ADMIN, "--password", self.password, "--role", "Admin"]
        args += ["--firstname", "Ada", "--lastname", "Admin", "--email", f"{ADMIN}@example.com"]
        result = subprocess.run(
            [AIRFLOW, *args], env=self.env, cwd=self.root, capture_output=True, text=True, timeout=300
        )
        if result.returncode:
            raise DeploymentError(
                f"airflow users create failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
            )

    def add_fab_role(self, name: str, permissions: Iterable[tuple[str, str]]) -> None:
        """A FAB role of ``(action, resource)`` pairs, e.g. ``("can_read", "DAG:my_dag")``, through
        FAB's API as ``admin``, once started (per-DAG resources exist once the DAG is parsed)."""
        actions = [{"action": {"name": a}, "resource": {"name": r}} for a, r in permissions]
        self.api.request("POST", "/auth/fab/v1/roles", json={"name": name, "actions": actions})

    def add_fab_user(self, name: str, *roles: str) -> str:
        """A FAB user with ``roles`` (``Viewer``, ``User``, ``Op``, ``Admin`` or ``add_fab_role``'s),
        through FAB's API as ``admin``, once started; ``api_as(name)`` signs in. Returns the password."""
        password = secrets.token_urlsafe(12)
        body = {
            "username": name,
            "password": password,
            "email": f"{name}@example.com",
            "first_name": name,
            "last_name": "Tester",
            "roles": [{"name": role} for role in roles],
        }
        self.api.request("POST", "/auth/fab/v1/users", json=body)
        self.passwords[name] = password
        return password

    def start(self, *, timeout: float = 180.0) -> AirflowDeployment:
        self.add_component("api-server", ["api-server", "--host", "127.0.0.1", "--port", str(self.port)])
        self.add_component("scheduler", ["scheduler", "--skip-serve-logs"])
        self.add_component("dag-processor", ["dag-processor"])
        self.wait_healthy(timeout=timeout)
        return self

    def add_component(
        self, name: str, args: list[str], *, env: Mapping[str, str] | None = None, home: Path | None = None
    ) -> Component:
        component_env = dict(self.env)
        if home is not None:
            home.mkdir(parents=True, exist_ok=True)
            self.homes.append(home)
            component_env["AIRFLOW_HOME"] = str(home)
        component_env.update(env or {})
        component = Component(name, [AIRFLOW, *args], component_env, self.logs / f"{name}.log", self.root)
        self.components.append(component)
        return component

    def check_alive(self) -> None:
        for component in self.components:
            if not component.alive():
                raise DeploymentError(
                    f"{component.name} exited with {component.process.returncode}:\n{component.tail()}"
                )

    def wait_healthy(self, *, timeout: float) -> None:
        def healthy() -> bool:
            health = httpx.get(f"{self.url}/api/v2/monitor/health", timeout=5).json()
            return all(
                health.get(part, {}).get("status") == "healthy"
                for part in ("metadatabase", "scheduler", "dag_processor")
            )

        wait_for(
            "a healthy api-server, scheduler and dag-processor",
            healthy,
            timeout=timeout,
            interval=2,
            check=self.check_alive,
        )

    def stop(self) -> None:
        if self._api is not None:
            self._api.http.close()
        for component in reversed(self.components):
            component.stop()

    def save_logs(self, dest: Path) -> Path:
        """Copy process logs and every component's task logs to ``dest`` (for test artifacts)."""
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(self.logs, dest / "processes")
        for index, home in enumerate(self.homes):
            if (home / "logs").exists():
                shutil.copytree(home / "logs", dest / f"task-logs-{index}-{home.name}")
        return dest

    # -- the API

    @property
    def api(self) -> Api:
        if self._api is None:
            self._api = wait_for(
                "a token from /auth/token",
                lambda: Api(self.ui_url, self.password),
                timeout=60,
                check=self.check_alive,
            )
        return self._api

    def api_as(self, username: str) -> Api:
        """A REST API client signed in as another user (``add_user``, ``add_fab_user``)."""
        return Api(self.ui_url, self.passwords[username], username)

    def wait(self, what: str, probe: Callable[[], T | None], *, timeout: float, interval: float = 2.0) -> T:
        return wait_for(what, probe, timeout=timeout, interval=interval, check=self.check_alive)

    def wait_for_dags(self, dag_ids: Iterable[str], *, timeout: float = 180.0) -> dict[str, dict[str, Any]]:
        wanted = set(dag_ids)

        def listed() -> dict[str, dict[str, Any]] | None:
            dags = self.api.dags()
            return dags if wanted <= set(dags) else None

        return self.wait(f"DAGs {sorted(wanted)} to be listed", listed, timeout=timeout)

    def wait_for_run(self, dag_id: str, run_id: str, *, timeout: float = 300.0) -> dict[str, Any]:
        def finished() -> dict[str, Any] | None:
            run = self.api.run(dag_id, run_id)
            return run if run["state"] in FINISHED else None

        return self.wait(f"run {run_id} of {dag_id} to finish", finished, timeout=timeout)

    def describe_run(self, dag_id: str, run_id: str) -> str:
        """Task states and log paths, for assertion messages."""
        tis = self.api.task_instances(dag_id, run_id)
        return json.dumps(
            {
                t: {k: ti.get(k) for k in ("state", "try_number", "hostname", "queue")}
                for t, ti in tis.items()
            },
            indent=1,
        )
