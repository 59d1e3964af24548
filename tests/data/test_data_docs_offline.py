"""GX Data Docs, built by real validation runs, opened in headless Chromium with no name resolution: every
page is styled, its scripts run and its icons and images load from the copies in the site."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from fusion.core.lake import Lake
from fusion.core.settings import ValidationConfig
from tasks.data_docs import external_links
from tasks.validate import load_suite, validate_batch
from tests.browser import SCREENSHOTS
from tests.data.test_validation import broken, land

pytestmark = pytest.mark.integration

# what a page looks like in the browser (a stylesheet or script that fails to load is a console error)
PAGE_STATE = """
return {
  font: getComputedStyle(document.body).fontFamily,
  scripts: {
    jquery: typeof window.jQuery === 'function',
    bootstrap_table: !!(window.jQuery && jQuery.fn.bootstrapTable),
    bootstrap_modal: !!(window.jQuery && jQuery.fn.modal),
    vega_embed: typeof window.vegaEmbed === 'function',
  },
  broken_images: Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src),
  text: document.body.innerText,
};
"""
BOOTSTRAP_FONT = "-apple-system"  # the first family of Bootstrap 4's body font stack
# Font Awesome's solid face, loaded for one icon (a page loads a web font only where it shows a glyph)
LOAD_ICON_FONT = """
const done = arguments[arguments.length - 1];
document.fonts.load('900 16px "Font Awesome 6 Free"', '\\uf00c').then(
  faces => done(faces.map(f => f.status)), error => done([String(error)]));
"""


@pytest.fixture(scope="module")
def offline_browser() -> Iterator[Any]:
    from tests.browser import chromium

    yield from chromium(offline=True)


@pytest.fixture(scope="module")
def site(
    tmp_path_factory: pytest.TempPathFactory, flights_tables: dict[str, pl.DataFrame], flights_settings: Any
) -> Path:
    """Data Docs of two runs: a clean batch and one with rows dropped (pages with failures)."""
    root = tmp_path_factory.mktemp("datadocs")
    lake = Lake(str(root / "lake"))
    suites = {t: load_suite(flights_settings.suite_path(t)) for t in flights_settings.dataset.validation.suites}
    sample = {"flights": flights_tables["flights"].head(3000), "weather": flights_tables["weather"].head(1000)}
    clean = validate_batch(land(lake, sample, "clean"), suites, ValidationConfig(), "flights", lake, root / "gx")
    validate_batch(
        land(lake, broken(sample), "dirty"),
        suites,
        ValidationConfig(on_invalid_rows="drop"),
        "flights",
        lake,
        root / "gx",
    )
    assert clean.docs_index
    return Path(clean.docs_index.removeprefix("file://")).parent


def page_state(driver: Any, url: str) -> dict[str, Any]:
    driver.get(url)
    state: dict[str, Any] = driver.execute_script(PAGE_STATE)
    state["icons"] = driver.execute_async_script(LOAD_ICON_FONT)
    return state


def test_the_browser_is_offline(offline_browser: Any, tmp_path: Path) -> None:
    """The checks below mean something: in this browser a page linking the CDN gets no stylesheet, and
    says so in the console."""
    offline_browser.get_log("browser")
    page = tmp_path / "cdn.html"
    page.write_text(
        '<html><head><link rel="stylesheet" '
        'href="https://maxcdn.bootstrapcdn.com/bootstrap/4.3.1/css/bootstrap.min.css"></head>'
        "<body>cdn</body></html>"
    )
    state = page_state(offline_browser, page.as_uri())
    errors = [e["message"] for e in offline_browser.get_log("browser") if e["level"] == "SEVERE"]
    assert any("bootstrap.min.css - Failed to load resource: net::ERR_NAME_NOT_RESOLVED" in e for e in errors), errors
    assert BOOTSTRAP_FONT not in state["font"]


def test_data_docs_pages_render_styled_with_no_network(offline_browser: Any, site: Path) -> None:
    pages = sorted(site.rglob("*.html"))
    pages = [p for p in pages if "vendor" not in p.relative_to(site).parts]
    validations = [p for p in pages if p.relative_to(site).parts[0] == "validations"]
    expectations = [p for p in pages if p.relative_to(site).parts[0] == "expectations"]
    assert len(validations) == 4 and len(expectations) == 2  # two tables, two runs
    for page in pages:
        assert external_links(page.read_text()) == [], f"{page} loads from the network"
        offline_browser.get_log("browser")  # drop earlier pages' messages
        state = page_state(offline_browser, page.as_uri())
        where = page.relative_to(site)
        assert BOOTSTRAP_FONT in state["font"], f"{where}: Bootstrap's styles are not applied ({state['font']})"
        assert all(state["scripts"].values()), f"{where}: scripts not loaded: {state['scripts']}"
        assert state["icons"] == ["loaded"], f"{where}: Font Awesome's font did not load: {state['icons']}"
        assert state["broken_images"] == [], f"{where}: images not loaded: {state['broken_images']}"
        errors = [e["message"] for e in offline_browser.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == [], f"{where}: console errors: {errors}"

    dirty = sorted(p for p in validations if p.name.endswith("-flights.html"))[-1]  # run folders sort by time
    state = page_state(offline_browser, dirty.as_uri())
    assert "Unsuccessful Expectations" in state["text"] and "carrier" in state["text"]
    if SCREENSHOTS:
        Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
        offline_browser.save_screenshot(str(Path(SCREENSHOTS) / "gx-data-docs.png"))
