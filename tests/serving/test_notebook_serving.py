"""notebooks/03_serving against the served champion of the serving tests (real Ray Serve, real Redis):
it asserts that /invocations and tritonclient agree, and that every latency request succeeds."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.notebooks import NOTEBOOKS, execute
from tests.serving.conftest import Served

pytestmark = [pytest.mark.integration, pytest.mark.services]


def test_serving_notebook_runs_against_the_served_champion(
    served: Served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    executed = execute(NOTEBOOKS / "03_serving.ipynb", {"SERVING_URL": served.url, "REQUESTS": 20})
    shown = [o for c in executed.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in shown if o.output_type == "error"]
    text = "".join(str(o.get("text", "")) for o in shown)
    assert f"flights_delay v{served.summary.model_version}" in text
    assert any("image/png" in o.get("data", {}) for o in shown)
