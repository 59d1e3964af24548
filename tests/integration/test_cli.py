"""`fusion run` as a user runs it: a subprocess on the whole real data set, with the embedded defaults."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SUMMARY_KEYS = {
    "run_id",
    "dataset",
    "batch_id",
    "rows_ingested",
    "rows_rejected",
    "validation_success",
    "metrics",
    "model_name",
    "model_version",
    "aliases",
    "promoted",
    "duration_s",
}


def fusion(home: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("FUSION_", "PREFECT_"))}
    environment.update({"FUSION_HOME": str(home), **(env or {})})
    return subprocess.run(
        [str(Path(sys.executable).parent / "fusion"), "run", "--json", *args],
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


@pytest.fixture(scope="module")
def full_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], subprocess.CompletedProcess[str]]:
    home = tmp_path_factory.mktemp("cli-home")
    done = fusion(home)
    assert done.returncode == 0, done.stderr[-3000:]
    return home, json.loads(done.stdout), done


def test_full_run_makes_a_champion_above_the_quality_bar(full_run: Any) -> None:
    _, summary, done = full_run
    assert summary.keys() >= SUMMARY_KEYS
    assert summary["dataset"] == "flights" and summary["rows_ingested"] == 336_776 and summary["rows_rejected"] == 0
    assert summary["validation_success"] is True
    metrics = summary["metrics"]
    assert set(metrics) == {"test_auc", "test_pr_auc", "test_logloss", "baseline_auc"}
    assert metrics["test_auc"] >= 0.74 and metrics["test_auc"] > metrics["baseline_auc"]
    assert summary["promoted"] is True and summary["aliases"] == ["challenger", "champion"]
    assert summary["model_name"] == "flights_delay" and summary["model_version"] == "1"
    # progress stage by stage, then the summary, on stderr; stdout holds only the JSON
    for stage in ("ingest", "validate", "features", "train", "evaluate", "register", "promote"):
        assert f"✓ {stage} done" in done.stderr
    assert "test AUC" in done.stderr and done.stdout.count("\n") == 1


def test_second_run_on_unchanged_data_skips_finished_stages(full_run: Any) -> None:
    home, first, _ = full_run
    done = fusion(home)
    assert done.returncode == 0, done.stderr[-3000:]
    second = json.loads(done.stdout)
    assert second["batch_id"] == first["batch_id"] and second["model_version"] == first["model_version"]
    assert [s["stage"] for s in second["stages"] if s["cached"]] == [
        "ingest",
        "validate",
        "features",
        "train",
        "evaluate",
    ]
    assert second["promoted"] is False


def test_failed_run_exits_non_zero_with_one_line_and_json(tmp_path: Path) -> None:
    bad = tmp_path / "flights.csv"
    bad.write_text("year,month\n2013,1\n")
    done = fusion(tmp_path / "home", env={"FUSION_DATASET__SOURCE__TABLES__FLIGHTS__URI": str(bad)})
    assert done.returncode == 1
    summary = json.loads(done.stdout)
    assert summary["validation_success"] is None and summary["model_version"] is None  # ingest refused: never validated
    assert summary["error"].startswith("ingest: table flights: missing column(s) day, dep_time")
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "missing column(s)" in errors[0]


def test_bad_config_is_a_clear_error(tmp_path: Path) -> None:
    done = fusion(tmp_path / "home", "--config", str(tmp_path / "missing.yaml"))
    assert done.returncode == 2 and "config file not found" in done.stderr
    assert "error" in json.loads(done.stdout)
