"""infra/image/Dockerfile, linted offline by the subset of hadolint's rules that matter here (hadolint
itself is not installable from the registries this project reaches) plus wiring with the repository:
DL3006/DL3007 (pinned base images, never latest), DL3002 (not root at the end), DL3008-style
(--no-install-recommends, apt lists removed in the same layer), DL4006 (pipefail before a pipe),
DL3020 (COPY, not ADD), DL3042 (pip without cache), and COPY sources that exist and are not ignored."""

from __future__ import annotations

import re
from pathlib import Path

from tests.conftest import REPO

DOCKERFILE = REPO / "infra" / "image" / "Dockerfile"


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


def test_base_images_are_pinned_and_the_image_ends_unprivileged() -> None:
    steps = instructions()
    values = args()
    for keyword, rest in steps:
        if keyword == "FROM":
            image = re.sub(r"\$\{(\w+)\}", lambda m: values[m.group(1)], rest.split()[0])
            assert ":" in image and not image.endswith(":latest"), f"FROM {image} is not pinned"
    users = [rest for keyword, rest in steps if keyword == "USER"]
    final_stage = max(i for i, (k, _) in enumerate(steps) if k == "FROM")
    assert users and any(k == "USER" for k, _ in steps[final_stage:]), "the runtime stage sets no USER"
    assert users[-1] not in ("root", "0")
    assert not [k for k, _ in steps if k == "ADD"], "COPY, not ADD"
    assert "ENTRYPOINT" not in {k for k, _ in steps}  # each pod names its command (dask, prefect, ray, fusion)


def test_run_steps_follow_the_rules() -> None:
    steps = instructions()
    pipefail = False
    for keyword, rest in steps:
        if keyword == "SHELL":
            pipefail = "pipefail" in rest
        if keyword != "RUN":
            continue
        if "apt-get install" in rest:
            assert "--no-install-recommends" in rest and "rm -rf /var/lib/apt/lists" in rest, rest
        if re.search(r"[^|]\|[^|]", rest):
            assert pipefail, f"a pipe without SHELL -o pipefail: {rest}"
        if "pip install" in rest:
            assert "--no-cache-dir" in rest and "==" in rest, rest


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
