"""Headless Chromium (Debian's, installed by infra/local/services.sh browser) driven by Selenium: what a
data engineer sees in the Prefect and MLflow UIs and in GX's Data Docs, checked in the rendered pages."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.conftest import services

# FUSION_SCREENSHOTS=docs/screenshots keeps a PNG of every page checked (how the README's are made)
SCREENSHOTS = os.environ.get("FUSION_SCREENSHOTS")


def chromium(offline: bool = False) -> Iterator[Any]:
    """A headless Chromium; `offline`: no host name resolves, so nothing but file:// and IP addresses
    load (what a machine without internet access sees), and the console log is kept."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    services("browser")
    options = Options()
    options.binary_location = "/usr/bin/chromium"
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1440,1000"):
        options.add_argument(argument)
    if offline:
        options.add_argument("--host-resolver-rules=MAP * ~NOTFOUND")
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def page_shows(driver: Any, url: str, texts: list[str], screenshot: str | None = None, timeout_s: float = 90) -> str:
    """Open `url` and wait until the rendered page's text holds every one of `texts` (a single-page app
    renders after its API calls); returns the text, or fails naming what is missing."""
    from selenium.webdriver.common.by import By

    driver.get(url)
    deadline = time.monotonic() + timeout_s
    shown = ""
    while time.monotonic() < deadline:
        shown = driver.find_element(By.TAG_NAME, "body").text
        if all(t in shown for t in texts):
            break
        time.sleep(1)
    if SCREENSHOTS and screenshot:
        Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(SCREENSHOTS) / f"{screenshot}.png"))
    missing = [t for t in texts if t not in shown]
    assert not missing, f"{url} does not show {missing}; it shows: {shown[:1500]!r}"
    return shown
