"""Linters run from environments of their own (`uv tool run`, pinned): their pins clash with uv.lock."""

from __future__ import annotations

import shutil
import subprocess

from tests.conftest import REPO


def uv_tool(spec: str, command: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`command` of the package `spec` (name==version), its output captured; the caller judges it."""
    uv = shutil.which("uv") or str(REPO / ".tools" / "bin" / "uv")
    return subprocess.run(
        [uv, "tool", "run", "--from", spec, command, *args], capture_output=True, text=True, timeout=600, check=False
    )
