"""tasks.data_docs: which links are rewritten and to what, on pages written here (the browser check of real
Data Docs is tests/data/test_data_docs_offline.py)."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import pytest

from tasks.data_docs import COMPLETE, LINKS, PACKAGES, Package, _verify, external_links, localize


def gx_template_links() -> set[str]:
    """Every stylesheet and script URL in the installed Great Expectations' page templates."""
    import great_expectations

    templates = Path(great_expectations.__file__).parent / "render" / "view" / "templates"
    return {url for t in templates.glob("*.j2") for url in external_links(t.read_text())}


def test_every_cdn_link_in_gx_templates_has_a_pinned_copy() -> None:
    links = gx_template_links()
    assert len(links) >= 15  # GX 1.x links bootstrap, jquery, popper, bootstrap-table, datepicker, fonts, vega
    assert links - set(LINKS) == set(), "a Great Expectations upgrade links files with no copy in LINKS"
    for folder, file in LINKS.values():
        assert folder in PACKAGES and file in PACKAGES[folder].files


def fake_assets(root: Path) -> Path:
    """An assets folder as fetch lays it out, with one line per file instead of the real CSS/JS."""
    for url, (folder, file) in LINKS.items():
        (root / folder / file).parent.mkdir(parents=True, exist_ok=True)
        (root / folder / file).write_text(f"/* {url} */")
    (root / COMPLETE).write_text("manifest\n")
    return root


PAGE = """<html><head>
<link rel="shortcut icon" href="{favicon}" type="image/x-icon"/>
<link href="https://maxcdn.bootstrapcdn.com/bootstrap/4.3.1/css/bootstrap.min.css" rel="stylesheet">
<script src="https://stackpath.bootstrapcdn.com/bootstrap/4.3.1/js/bootstrap.min.js"
 integrity="sha384-abc" crossorigin="anonymous"></script>
<script src='https://cdn.jsdelivr.net/npm/vega@5'></script>
</head><body>
<img src="https://great-expectations-web-assets.s3.us-east-2.amazonaws.com/logo-long.png?d=1&amp;dataContextId=x"/>
<a href="https://greatexpectations.io">GX</a>
</body></html>"""


def site_with_pages(root: Path) -> tuple[Path, Path, Path]:
    site = root / "local_site"
    (site / "static" / "images").mkdir(parents=True)
    (site / "static" / "images" / "favicon.ico").write_bytes(b"ico")
    (site / "static" / "images" / "logo-long.png").write_bytes(b"png")
    top = site / "index.html"
    top.write_text(PAGE.format(favicon="./static/images/favicon.ico"))
    nested = site / "validations" / "suite" / "run" / "page.html"
    nested.parent.mkdir(parents=True)
    nested.write_text(PAGE.format(favicon="../static/images/favicon.ico"))  # one folder short, as GX writes it
    return site, top, nested


def loads(page: Path) -> list[str]:
    return re.findall(r"""(?:href|src)=["']([^"']+)["']""", page.read_text())


def test_localize_points_every_page_at_the_copies_in_the_site(tmp_path: Path) -> None:
    site, top, nested = site_with_pages(tmp_path)
    assert localize(site, assets=fake_assets(tmp_path / "assets")) == []
    for page in (top, nested):
        html = page.read_text()
        assert "integrity=" not in html and "crossorigin" not in html
        assert 'href="https://greatexpectations.io"' in html  # a link to a website is not a load
        local = [u for u in loads(page) if "://" not in u]
        assert len(local) == 5  # favicon, 2 CDN files, vega, the logo
        for url in local:
            assert (page.parent / url).is_file(), f"{page.relative_to(site)}: {url} does not exist"
    assert (site / "static" / "vendor" / "bootstrap@4.3.1" / "dist" / "css" / "bootstrap.min.css").is_file()
    assert "static/vendor/vega@5.33.1/build/vega.min.js" in top.read_text()
    assert "../../../static/vendor/vega@5.33.1/build/vega.min.js" in nested.read_text()


def test_localize_is_idempotent_and_leaves_older_pages_alone(tmp_path: Path) -> None:
    site, top, nested = site_with_pages(tmp_path)
    assets = fake_assets(tmp_path / "assets")
    os.utime(top, (1_000_000_000, 1_000_000_000))
    localize(site, since=1_000_000_001, assets=assets)
    assert "https://maxcdn.bootstrapcdn.com" in top.read_text()  # written before `since`: not read
    once = nested.read_text()
    localize(site, assets=assets)
    assert nested.read_text() == once and external_links(top.read_text()) == []


def test_without_assets_the_pages_keep_their_cdn_links_and_say_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    site, _, _ = site_with_pages(tmp_path)
    with caplog.at_level(logging.WARNING, logger="tasks.data_docs"):
        left = localize(site, assets=tmp_path / "missing")
    assert "https://maxcdn.bootstrapcdn.com/bootstrap/4.3.1/css/bootstrap.min.css" in left
    assert "no assets in" in caplog.text and "make setup" in caplog.text
    assert not (site / "static" / "vendor").exists()


def test_a_tarball_that_is_not_what_npm_published_is_refused() -> None:
    package = Package("left-pad", "1.3.0", "sha512-" + "A" * 86 + "==", ("index.js",))
    with pytest.raises(ValueError, match=r"registry\.npmjs\.org/left-pad/-/left-pad-1\.3\.0\.tgz: sha512 is"):
        _verify(b"not the package", package)
