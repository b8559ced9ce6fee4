"""Start, flush and stop a localstripe server (``localstripe_server.py``) in a child process.

Used by the pytest fixtures in ``tests/conftest.py`` and by the demo::

    with LocalStripe() as server:          # any free port
        server.flush()                     # empty the store
        client = stripe.StripeClient(STRIPE_TEST_KEY, base_addresses={"api": server.url})

(This module is not called ``localstripe.py``: running ``localstripe_server.py`` as a script puts
this folder first on ``sys.path``, and such a file would shadow the real ``localstripe`` package.)
"""

from __future__ import annotations

import queue
import subprocess
import sys
import tempfile
import threading
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import IO

from tests.support.localstripe_server import READY_PREFIX

SERVER_SCRIPT = Path(__file__).with_name("localstripe_server.py")

# localstripe accepts any key that starts with ``sk_`` (and rejects ``rk_`` keys with 401).
STRIPE_TEST_KEY = "sk_test_krenalis"


class LocalStripeError(RuntimeError):
    """The localstripe child process could not be started."""


class LocalStripe:
    """One localstripe server in a child process, bound to 127.0.0.1, keeping nothing on disk.

    Its stderr (the request log) goes to ``log_path``. The child also stops on its own when this
    process dies, because it watches its stdin (``--exit-on-stdin-eof``).
    """

    def __init__(self, port: int = 0, *, startup_timeout: float = 30.0, quiet: bool = False) -> None:
        self.port = port
        self.startup_timeout = startup_timeout
        self.quiet = quiet
        self.log_path: Path | None = None
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
        command = [sys.executable, str(SERVER_SCRIPT), "--port", str(self.port), "--exit-on-stdin-eof"]
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

    def stop(self) -> None:
        """Terminate the child (SIGTERM, then SIGKILL after 5 s) and remove its log file."""
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
        if self.log_path is not None:
            self.log_path.unlink(missing_ok=True)

    def __enter__(self) -> LocalStripe:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
