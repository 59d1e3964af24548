"""GX Data Docs without a network: the CSS, JavaScript and fonts its pages link from CDNs, fetched once
from the npm registry (pinned versions, checked against npm's sha512 integrity) and copied beside the
site, with every page's links rewritten to those copies.

Great Expectations renders its pages with links to maxcdn, cdnjs, unpkg, jsdelivr and code.jquery.com;
a data engineer on a machine without internet access (or behind a proxy that blocks CDNs) gets an
unstyled page with dead filters and no charts. `make setup` runs `python -m tasks.data_docs fetch`;
validation calls `localize` after each Data Docs build."""

from __future__ import annotations

import base64
import functools
import hashlib
import io
import logging
import os
import re
import shutil
import sys
import tarfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

REGISTRY = "https://registry.npmjs.org"
# where `make setup` puts the assets; FUSION_DATA_DOCS_ASSETS names another folder (an image, a wheel install)
DEFAULT_ASSETS = Path(__file__).resolve().parents[1] / ".tools" / "datadocs"
VENDOR = Path("static") / "vendor"  # inside the Data Docs site
COMPLETE = ".complete"


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    integrity: str  # npm's dist.integrity of the tarball
    files: tuple[str, ...]  # paths in the package (a trailing / takes a folder)

    @property
    def folder(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def tarball(self) -> str:
        return f"{REGISTRY}/{self.name}/-/{self.name.rsplit('/', 1)[-1]}-{self.version}.tgz"


def _package(spec: str, integrity: str, *files: str) -> Package:
    name, _, version = spec.rpartition("@")
    return Package(name, version, integrity, files)


PACKAGES = {
    p.folder: p
    for p in (
        _package(
            "bootstrap@4.3.1",
            "sha512-rXqOmH1VilAt2DyPzluTi2blhk17bO7ef+zLLPlWvG494pDxcM234pJ8wTc/6R40UWizAIIMgxjvxZg5kmsbag==",
            "dist/css/bootstrap.min.css",
            "dist/js/bootstrap.min.js",
        ),
        _package(
            "jquery@3.7.1",
            "sha512-m4avr8yL8kmFN8psrbFFFmB/If14iN5o9nw/NgnnM+kybDJpRsAynV2BsfpTYrTRysYUdADVD7CkUUizgkpLfg==",
            "dist/jquery.min.js",
        ),
        _package(
            "popper.js@1.12.9",
            "sha512-s0EEi9xiSCdqz9lV4IiVH5yIZnDX/U1t0tCjB+0jXx9jW8lrR7kOpVupiUg175ogqVoudpDXHF1p6dKATCHMeg==",
            "dist/umd/popper.min.js",
        ),
        _package(
            "bootstrap-table@1.19.1",
            "sha512-WvV+l1AI/C+zThaKmfHmi/IuayVNB0qdFyEhFx1jyZhO0oLtNJNANkCR3rvJf6Dkh72dsLElxpE/bzK9seEQLA==",
            "dist/bootstrap-table.min.css",
            "dist/bootstrap-table.min.js",
            "dist/extensions/filter-control/bootstrap-table-filter-control.min.js",
        ),
        _package(
            "bootstrap-table@1.19.0",
            "sha512-L+USHm3X9FKocx/6yngGu12yF6r6s1Ntuc+hoIK2a2QQJjHw5kcySLiE2HY/9sEaSGAOfPbfQOtBH3uKkcpqEA==",
            "dist/extensions/filter-control/bootstrap-table-filter-control.css",
            "dist/extensions/filter-control/bootstrap-table-filter-control.min.css",
        ),
        _package(
            "bootstrap-datepicker@1.9.0",
            "sha512-9rYYbaVOheGYxjOr/+bJCmRPihfy+LkLSg4fIFMT9Od8WwWB/MB50w0JO1eBgKUMbb7PFHQD5uAfI3ArAxZRXA==",
            "dist/css/bootstrap-datepicker.min.css",
            "dist/js/bootstrap-datepicker.min.js",
        ),
        _package(
            "@forevolve/bootstrap-dark@1.1.0",
            "sha512-A3ucpEpxPoTVO490lZZCfjPXxv832l7mm1IxX3bXyxvgwnPGXDLyh7dWrphXKO8YBAu3EswbBEu3VSW8NRMW3A==",
            "dist/css/bootstrap-prefers-dark.css",
        ),
        _package(
            "@fortawesome/fontawesome-free@6.6.0",
            "sha512-60G28ke/sXdtS9KZCpZSHHkCbdsOGEhIUGlwq6yhY74UpTiToIh8np7A8yphhM4BWsvNFtIvLpi4co+h9Mr9Ow==",
            "css/all.min.css",
            "webfonts/",  # all.min.css loads ../webfonts/*
        ),
        # GX's templates ask for vega@5, vega-lite@5, vega-embed@6 (whatever is newest): pinned here
        _package(
            "vega@5.33.1",
            "sha512-1fArfVDUqVbb5z8n+/nVQb+VNBzx8svY6CrsyTK4Ujm4yrd9I1auoKxBAPXLCavY1LcrbHUskQbGUP8gXOzyQw==",
            "build/vega.min.js",
        ),
        _package(
            "vega-lite@5.23.0",
            "sha512-l4J6+AWE3DIjvovEoHl2LdtCUkfm4zs8Xxx7INwZEAv+XVb6kR6vIN1gt3t2gN2gs/y4DYTs/RPoTeYAuEg6mA==",
            "build/vega-lite.min.js",
        ),
        _package(
            "vega-embed@6.29.0",
            "sha512-PmlshTLtLFLgWtF/b23T1OwX53AugJ9RZ3qPE2c01VFAbgt3/GSNI/etzA/GzdrkceXFma+FDHNXUppKuM0U6Q==",
            "build/vega-embed.min.js",
        ),
    )
}

_UNPKG_TABLE = "https://unpkg.com/bootstrap-table@{v}/dist/{f}"
_FILTER = "extensions/filter-control/bootstrap-table-filter-control"
# each link in GX's page templates -> the package and file it is served from here
LINKS: dict[str, tuple[str, str]] = {
    "https://maxcdn.bootstrapcdn.com/bootstrap/4.3.1/css/bootstrap.min.css": (
        "bootstrap@4.3.1",
        "dist/css/bootstrap.min.css",
    ),
    "https://stackpath.bootstrapcdn.com/bootstrap/4.3.1/js/bootstrap.min.js": (
        "bootstrap@4.3.1",
        "dist/js/bootstrap.min.js",
    ),
    "https://code.jquery.com/jquery-3.7.1.min.js": ("jquery@3.7.1", "dist/jquery.min.js"),
    "https://cdnjs.cloudflare.com/ajax/libs/popper.js/1.12.9/umd/popper.min.js": (
        "popper.js@1.12.9",
        "dist/umd/popper.min.js",
    ),
    _UNPKG_TABLE.format(v="1.19.1", f="bootstrap-table.min.css"): (
        "bootstrap-table@1.19.1",
        "dist/bootstrap-table.min.css",
    ),
    _UNPKG_TABLE.format(v="1.19.1", f="bootstrap-table.min.js"): (
        "bootstrap-table@1.19.1",
        "dist/bootstrap-table.min.js",
    ),
    _UNPKG_TABLE.format(v="1.19.1", f=f"{_FILTER}.min.js"): ("bootstrap-table@1.19.1", f"dist/{_FILTER}.min.js"),
    _UNPKG_TABLE.format(v="1.19.0", f=f"{_FILTER}.css"): ("bootstrap-table@1.19.0", f"dist/{_FILTER}.css"),
    _UNPKG_TABLE.format(v="1.19.0", f=f"{_FILTER}.min.css"): ("bootstrap-table@1.19.0", f"dist/{_FILTER}.min.css"),
    "https://cdnjs.cloudflare.com/ajax/libs/bootstrap-datepicker/1.9.0/css/bootstrap-datepicker.min.css": (
        "bootstrap-datepicker@1.9.0",
        "dist/css/bootstrap-datepicker.min.css",
    ),
    "https://cdnjs.cloudflare.com/ajax/libs/bootstrap-datepicker/1.9.0/js/bootstrap-datepicker.min.js": (
        "bootstrap-datepicker@1.9.0",
        "dist/js/bootstrap-datepicker.min.js",
    ),
    "https://cdn.jsdelivr.net/npm/@forevolve/bootstrap-dark@1.1.0/dist/css/bootstrap-prefers-dark.css": (
        "@forevolve/bootstrap-dark@1.1.0",
        "dist/css/bootstrap-prefers-dark.css",
    ),
    "https://cdnjs.cloudflare.com/ajax/libs/font-awesome/6.6.0/css/all.min.css": (
        "@fortawesome/fontawesome-free@6.6.0",
        "css/all.min.css",
    ),
    "https://cdn.jsdelivr.net/npm/vega@5": ("vega@5.33.1", "build/vega.min.js"),
    "https://cdn.jsdelivr.net/npm/vega-lite@5": ("vega-lite@5.23.0", "build/vega-lite.min.js"),
    "https://cdn.jsdelivr.net/npm/vega-embed@6": ("vega-embed@6.29.0", "build/vega-embed.min.js"),
}


def assets_dir() -> Path:
    return Path(os.environ.get("FUSION_DATA_DOCS_ASSETS") or DEFAULT_ASSETS)


def _verify(data: bytes, package: Package) -> None:
    algorithm, _, expected = package.integrity.partition("-")
    actual = base64.b64encode(hashlib.new(algorithm, data).digest()).decode()
    if actual != expected:
        raise ValueError(f"{package.tarball}: {algorithm} is {actual}, npm's integrity says {expected}")


def _extract(data: bytes, package: Package, into: Path) -> None:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        members = [
            m
            for m in tar.getmembers()
            if m.isfile()
            and any(
                m.name == f"package/{f}" or (f.endswith("/") and m.name.startswith(f"package/{f}"))
                for f in package.files
            )
        ]
        missing = [f for f in package.files if not any(m.name.startswith(f"package/{f}") for m in members)]
        if missing:
            raise ValueError(f"{package.tarball} has no {missing}")
        for member in members:
            target = into / package.folder / member.name.removeprefix("package/")
            target.parent.mkdir(parents=True, exist_ok=True)
            source = tar.extractfile(member)
            assert source is not None
            target.write_bytes(source.read())


def fetch(into: Path, timeout_s: float = 60) -> Path:
    """Download each package's tarball from the npm registry, check its integrity and keep the files the
    pages use under `into`/<name>@<version>/. Idempotent: a complete folder is left as it is."""
    marker = into / COMPLETE
    if marker.is_file() and marker.read_text() == _manifest():
        marker.touch()  # up to date for make
        return into
    staging = into.with_name(into.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    for package in PACKAGES.values():
        # https to the npm registry, a URL built from this module's constants; the bytes are checked
        # against npm's sha512 integrity before use
        with urllib.request.urlopen(package.tarball, timeout=timeout_s) as response:  # nosec B310
            data = response.read()
        _verify(data, package)
        _extract(data, package, staging)
    (staging / COMPLETE).write_text(_manifest())
    shutil.rmtree(into, ignore_errors=True)
    staging.rename(into)
    return into


def _manifest() -> str:
    return "\n".join(sorted(f"{p.folder} {p.integrity}" for p in PACKAGES.values())) + "\n"


def external_links(html: str) -> list[str]:
    """Stylesheets, scripts and images a page still loads from the network (links to websites are not loads)."""
    tags = re.findall(r"<(?:link|script|img)\b[^>]*>", html, flags=re.IGNORECASE)
    return [
        url
        for tag in tags
        for url in re.findall(r"""(?:href|src)\s*=\s*["'](https?://[^"']+)["']""", tag)
        if not tag.lower().startswith("<link") or "stylesheet" in tag.lower()
    ]


def localize(site: Path, since: float | None = None, assets: Path | None = None) -> list[str]:
    """Copy the assets into `site`/static/vendor and point every page (or those written after `since`)
    at them. Returns the network links left in those pages: none when the assets are here and GX's
    templates link only what LINKS knows; each one left is logged."""
    assets = assets or assets_dir()
    vendor = site / VENDOR
    if not (assets / COMPLETE).is_file():
        log.warning(
            "GX Data Docs will load their CSS/JS from CDNs: no assets in %s (make setup, or "
            "python -m tasks.data_docs fetch DIR and FUSION_DATA_DOCS_ASSETS=DIR)",
            assets,
        )
        return sorted({u for page in _pages(site, since) for u in external_links(page.read_text())})
    if not (vendor / COMPLETE).is_file() or (vendor / COMPLETE).read_text() != (assets / COMPLETE).read_text():
        shutil.rmtree(vendor, ignore_errors=True)
        shutil.copytree(assets, vendor)
    left: set[str] = set()
    for page in _pages(site, since):
        html = page.read_text()
        static = os.path.relpath(site / "static", page.parent)
        changed = _TAG.sub(functools.partial(_local_tag, page=page.parent, static=static), html)
        if changed != html:
            page.write_text(changed)
        left.update(external_links(changed))
    if left:
        log.warning("GX Data Docs still load from the network: %s", ", ".join(sorted(left)))
    return sorted(left)


# GX's pages show their logo from an S3 bucket, with the data context's id in the query string; the
# site holds the same image in static/images
_GX_IMAGE = re.compile(
    r"https://great-expectations-web-assets\.s3\.[a-z0-9-]+\.amazonaws\.com/([\w.-]+\.(?:png|svg))(\?.*)?"
)


_TAG = re.compile(r"<(?:link|script|img)\b[^>]*>", flags=re.IGNORECASE)
_URL = re.compile(r"""(?P<attr>\b(?:href|src)\s*=\s*)(?P<q>["'])(?P<url>[^"']*)(?P=q)""")
# a copy served from a file:// page is not cross-origin and has no CDN's hash to check (fetch checked
# npm's): `crossorigin` would make Chromium refuse the file, `integrity` would fail on it
_CDN_ONLY = re.compile(r"""\s+(?:integrity\s*=\s*(["'])[^"']*\1|crossorigin(?:\s*=\s*(["'])[^"']*\2)?)""")


def _local_url(url: str, page: Path, static: str) -> str | None:
    """The copy in the site of a CDN link (or of GX's logo), as a path relative to the page."""
    if url in LINKS:
        folder, file = LINKS[url]
        return f"{static}/vendor/{folder}/{file}"
    image = _GX_IMAGE.fullmatch(url)
    if image:
        return f"{static}/images/{image.group(1)}"
    if "://" not in url and "static/" in url and not (page / url).exists():
        # GX's favicon link climbs the wrong number of folders on nested pages
        rest = url.rsplit("static/", 1)[1]
        if (page / static / rest).exists():
            return f"{static}/{rest}"
    return None


def _local_tag(found: re.Match[str], page: Path, static: str) -> str:
    tag = found.group(0)
    match = _URL.search(tag)
    local = _local_url(match.group("url"), page, static) if match else None
    if match is None or local is None:
        return tag
    q = match.group("q")
    tag = tag[: match.start()] + f"{match.group('attr')}{q}{local}{q}" + tag[match.end() :]
    return _CDN_ONLY.sub("", tag)


def _pages(site: Path, since: float | None) -> list[Path]:
    return [
        p
        for p in site.rglob("*.html")
        if VENDOR not in p.relative_to(site).parents and (since is None or p.stat().st_mtime >= since)
    ]


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != "fetch":
        print("usage: python -m tasks.data_docs fetch DIR", file=sys.stderr)
        return 2
    started = time.monotonic()
    into = fetch(Path(argv[1]))
    print(f"GX Data Docs assets in {into} ({time.monotonic() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
