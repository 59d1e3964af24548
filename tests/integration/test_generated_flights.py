"""`fusion generate flights` + the shipped flights config, with only its three table URIs changed."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

pytestmark = pytest.mark.integration
ROWS = 30_000


def test_the_flights_config_runs_on_generated_tables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.training_pipeline import run_pipeline
    from fusion.cli import app

    result = CliRunner().invoke(app, ["generate", "flights", "--rows", str(ROWS), "--out", str(tmp_path / "data")])
    assert result.exit_code == 0, result.output
    variables = dict(line.split("=", 1) for line in result.stdout.splitlines() if line.startswith("FUSION_"))
    assert sorted(variables) == [f"FUSION_DATASET__SOURCE__TABLES__{t}__URI" for t in ("FLIGHTS", "PLANES", "WEATHER")]
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("FUSION_HOME", str(tmp_path / "home"))

    summary = run_pipeline()
    assert summary.rows_ingested == ROWS and summary.rows_rejected == 0 and summary.validation_success
    # the generated delays have causes the features see (weather, hour, the previous leg): learned
    assert summary.metrics.test_auc is not None and summary.metrics.test_auc > 0.58
    assert summary.promoted and summary.model_version == "1"
