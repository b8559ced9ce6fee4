"""Debian's headless Chromium driven by Selenium (Debian's chromedriver: the versions always match,
and nothing is downloaded), with screenshots saved as test artifacts."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.deployment import ARTIFACTS, DeploymentError

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
SCREENSHOTS = ARTIFACTS / "screenshots"
# Without the background-networking switches Chromium keeps dialling Google on a closed network.
FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,1000",
)


def require_chromium() -> None:
    """Skip locally when Chromium is missing; in CI (``.ci/run`` installs it) fail instead."""
    from tests.e2e.conftest import require

    require("selenium")
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not Path(path).exists()]
    if missing:
        message = f"{', '.join(missing)} not installed (apt-get install -y chromium chromium-driver)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


class Browser:
    """A thin helper over a Selenium driver: waits that are bounded, and named screenshots."""

    def __init__(self, driver: Any, base_url: str, shots: Path) -> None:
        self.driver = driver
        self.base_url = base_url
        self.shots = shots
        self.taken: list[Path] = []

    def open(self, path: str) -> None:
        self.driver.get(self.base_url + path)

    def until(self, what: str, probe: Callable[[], Any], *, timeout: float = 30.0, every: float = 0.5) -> Any:
        """Poll ``probe`` (exceptions count as "not yet") until it returns something truthy."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            try:
                result = probe()
            except Exception as exc:  # stale or missing elements while React re-renders
                last = exc
            else:
                if result:
                    return result
                last = result
            time.sleep(every)
        self.screenshot(f"timeout-{what.replace(' ', '-')[:40]}")
        raise DeploymentError(f"browser: timed out after {timeout:.0f}s waiting for {what}; last: {last!r}")

    def css(self, selector: str, root: Any = None) -> Any:
        from selenium.webdriver.common.by import By

        return (root or self.driver).find_element(By.CSS_SELECTOR, selector)

    def xpath(self, expression: str, root: Any = None) -> Any:
        from selenium.webdriver.common.by import By

        return (root or self.driver).find_element(By.XPATH, expression)

    def screenshot(self, name: str) -> Path:
        path = self.shots / f"{len(self.taken) + 1:02d}-{name}.png"
        self.driver.save_screenshot(str(path))
        self.taken.append(path)
        return path


@contextmanager
def chromium(base_url: str, name: str) -> Iterator[Browser]:
    """A fresh headless Chromium (own profile directory); screenshots go to
    ``test-artifacts/e2e/screenshots/<name>/``."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must not try to download anything
    shots = SCREENSHOTS / name
    shutil.rmtree(shots, ignore_errors=True)
    shots.mkdir(parents=True)
    profile = tempfile.mkdtemp(prefix="e2e-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(60)
    browser = Browser(driver, base_url, shots)
    try:
        yield browser
    except BaseException:
        try:
            browser.screenshot("failure")
            (shots / "failure.html").write_text(driver.page_source)
        except Exception:
            pass
        raise
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
