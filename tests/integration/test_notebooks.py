"""notebooks/ run top to bottom in a fresh kernel on a sample of the flights (the notebooks assert what
they show: validation passes, a damaged copy fails, the experiment is logged)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.notebooks import NOTEBOOKS, execute, with_outputs, with_parameters

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("name", ["01_explore_data", "02_features_and_models"])
def test_notebook_runs_top_to_bottom(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the notebooks' own homes land here and go with it
    executed = execute(NOTEBOOKS / f"{name}.ipynb", {"SAMPLE_EVERY_NTH_DAY": 10})
    errors = [o for c in executed.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    shown = [o for c in executed.cells if c.cell_type == "code" for o in c.outputs]
    assert any("image/png" in o.get("data", {}) for o in shown)  # the plots were drawn


def test_notebooks_are_committed_without_outputs() -> None:
    assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == [
        "01_explore_data.ipynb",
        "02_features_and_models.ipynb",
        "03_serving.ipynb",
    ]
    assert all(with_outputs(p) == [] for p in NOTEBOOKS.glob("*.ipynb"))


def test_parameters_are_checked() -> None:
    import nbformat

    notebook = nbformat.read(NOTEBOOKS / "01_explore_data.ipynb", as_version=4)
    with pytest.raises(ValueError, match="no parameter"):
        with_parameters(notebook, {"SAMPLE_FRACTION": 0.1})
