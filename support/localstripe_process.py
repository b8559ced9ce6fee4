"""Start, flush and stop a localstripe server (``localstripe_server.py``) in a child process.

Used by the pytest fixtures in ``tests/conftest.py``, the benchmarks and the demo (``scripts/demo.py``)::

    with LocalStripe() as server:          # any free port
        server.flush()                     # empty the store
        client = stripe.StripeClient(STRIPE_TEST_KEY, base_addresses={"api": server.url})
        mark = server.mark()
        ...                                # requests
        server.contract_violations(mark)   # what real Stripe would have refused since the mark

(This module is not called ``localstripe.py``: running ``localstripe_server.py`` as a script puts
this folder first on ``sys.path``, and such a file would shadow the real ``localstripe`` package.)
"""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import tempfile
import threading
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import IO, Any, ClassVar

from support.localstripe_server import READY_PREFIX

SERVER_SCRIPT = Path(__file__).with_name("localstripe_server.py")

# localstripe accepts any key that starts with ``sk_`` (and rejects ``rk_`` keys with 401).
STRIPE_TEST_KEY = "sk_test_krenalis"


class LocalStripeError(RuntimeError):
    """The localstripe child process could not be started."""


class LocalStripe:
    """One localstripe server in a child process, bound to 127.0.0.1, keeping nothing on disk.

    Its stderr (the request log) goes to ``log_path``, the requests it refused for breaking
    Stripe's contract to ``contract_log_path`` (``--contract-log``; see ``contract_violations``).
    The child also stops on its own when this process dies, because it watches its stdin
    (``--exit-on-stdin-eof``). ``LocalStripe.running`` lists the servers started and not stopped
    by this process, for the fixture in ``tests/conftest.py`` that fails tests on violations.
    """

    running: ClassVar[list[LocalStripe]] = []

    def __init__(self, port: int = 0, *, startup_timeout: float = 30.0, quiet: bool = False) -> None:
        self.port = port
        self.startup_timeout = startup_timeout
        self.quiet = quiet
        self.log_path: Path | None = None
        self.contract_log_path: Path | None = None
        self._url: str | None = None
        self._process: subprocess.Popen[str] | None = None
        self._log: IO[str] | None = None
        self._pump: threading.Thread | None = None

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:41234`` (no trailing slash)."""
        if self._url is None:
            raise LocalStripeError("localstripe is not running: call start() first")
        return self._url

    def start(self) -> LocalStripe:
        if self._process is not None:
            return self
        self._log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed in stop()
            "w+", prefix="localstripe-", suffix=".log", delete=False
        )
        self.log_path = Path(self._log.name)
        with tempfile.NamedTemporaryFile(
            prefix="localstripe-contract-", suffix=".jsonl", delete=False
        ) as log:
            self.contract_log_path = Path(log.name)
        command = [
            sys.executable,
            str(SERVER_SCRIPT),
            "--port",
            str(self.port),
            "--exit-on-stdin-eof",
            "--contract-log",
            str(self.contract_log_path),
        ]
        if self.quiet:
            command.append("--quiet")
        self._process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True
        )
        try:
            self._url = self._wait_for_ready_line()
        except BaseException:
            self.stop()
            raise
        LocalStripe.running.append(self)
        return self

    def _wait_for_ready_line(self) -> str:
        """Read the child's stdout in a thread (then keep draining it) until the ready line."""
        assert self._process is not None and self._process.stdout is not None
        stdout = self._process.stdout
        lines: queue.Queue[str] = queue.Queue()

        def pump() -> None:
            for line in stdout:
                lines.put(line)
            lines.put("")  # EOF: the child exited

        self._pump = threading.Thread(target=pump, name="localstripe-stdout", daemon=True)
        self._pump.start()
        try:
            while True:
                line = lines.get(timeout=self.startup_timeout)
                if not line:
                    raise LocalStripeError(f"localstripe exited during startup:\n{self._log_tail()}")
                if line.startswith(READY_PREFIX):
                    return line[len(READY_PREFIX) :].strip()
        except queue.Empty:
            raise LocalStripeError(
                f"localstripe did not start within {self.startup_timeout}s:\n{self._log_tail()}"
            ) from None

    def _log_tail(self, lines: int = 20) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def flush(self) -> None:
        """Delete every object in the store (``DELETE /_config/data``)."""
        request = urllib.request.Request(f"{self.url}/_config/data", method="DELETE")
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()

    def mark(self) -> int:
        """A point in the contract log, for ``contract_violations(since=mark)``."""
        if self.contract_log_path is None or not self.contract_log_path.exists():
            return 0
        return self.contract_log_path.stat().st_size

    def contract_violations(self, since: int = 0) -> list[dict[str, Any]]:
        """What the server refused for breaking Stripe's contract since ``mark()`` (0: ever).

        One ``{"method", "path", "param", "violation"}`` per violation; the server writes them
        before it answers the request, so a caller sees them as soon as its response arrived.
        """
        if since == self.mark():  # nothing new: no read
            return []
        assert self.contract_log_path is not None
        with self.contract_log_path.open("rb") as log:
            log.seek(since)
            return [json.loads(line) for line in log.read().splitlines()]

    def stop(self) -> None:
        """Terminate the child (SIGTERM, then SIGKILL after 5 s) and remove its log files."""
        if self in LocalStripe.running:
            LocalStripe.running.remove(self)
        process, self._process, self._url = self._process, None, None
        if process is not None:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            if self._pump is not None:
                self._pump.join(timeout=5)  # it ends at EOF; closing stdout under it would raise
                self._pump = None
            for stream in (process.stdin, process.stdout):
                if stream is not None:
                    stream.close()
        if self._log is not None:
            self._log.close()
            self._log = None
        for path in (self.log_path, self.contract_log_path):
            if path is not None:
                path.unlink(missing_ok=True)

    def __enter__(self) -> LocalStripe:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
