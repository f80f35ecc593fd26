"""A real browser for the dashboard's tests: Debian's headless Chromium, driven through
Debian's chromedriver with Selenium. Missing any of the three, a test that asks for the
browser is skipped, saying which and how to install it (``make system-deps``, ``make deps``)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = ("chromium", "chromium-browser")
CHROMEDRIVER = "chromedriver"
WINDOW = (1600, 1000)


def _found(names: tuple[str, ...]) -> str | None:
    return next((path for name in names if (path := shutil.which(name))), None)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    """A headless Chromium window, closed after the test."""
    webdriver = pytest.importorskip(
        "selenium.webdriver", reason="selenium is not installed (make deps installs the dev extras)"
    )
    chromium = _found(CHROMIUM)
    if chromium is None:
        pytest.skip("chromium is not installed (make system-deps installs Debian's chromium and chromium-driver)")
    driver_path = _found((CHROMEDRIVER,))
    if driver_path is None:
        pytest.skip("chromedriver is not installed (make system-deps installs Debian's chromium-driver)")

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in (
        "--headless=new",
        # As root (CI, the build machines) Chromium refuses to start with its sandbox.
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        # The facade is on loopback: never through a proxy from the environment.
        "--no-proxy-server",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(argument)
    # The page's console (script errors, CSP violations) and its requests are read back by the tests.
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    # A given driver path keeps Selenium Manager from looking for (and downloading) one.
    service = webdriver.ChromeService(executable_path=driver_path, log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(options=options, service=service)
    try:
        yield driver
    finally:
        driver.quit()
