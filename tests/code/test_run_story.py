"""The run's story for the Prefect UI, shaped from the stages' results (tasks/run_story.py)."""

from __future__ import annotations

from tasks.evaluate import Evaluation
from tasks.register import GateDecision, Registration
from tasks.run_story import artifact_key, failure_story, gate_story, metrics_story, mlflow_links, validation_story
from tasks.validate import ExpectationOutcome, ValidatedBatch


def evaluation() -> Evaluation:
    return Evaluation(0.81234, 0.6, 0.45, 0.7, 0.5, 0.55, "logistic", 0.8, 1000, 0.2, [], {})


def test_validation_lists_failures_first_and_keeps_table_cells_intact() -> None:
    outcomes = [
        ExpectationOutcome("t", "expect_column_values_to_not_be_null", "a", True, 0, True),
        ExpectationOutcome("t", "expect_column_values_to_be_between", "b|c", False, 12, True),
    ]
    valid = ValidatedBatch(
        "my_data", "b1", {}, 100, 12, "lake/report.json", "file:///docs/index.html", outcomes, {"t": 12}
    )
    story = validation_story("my_data", valid)
    assert story.key == "my-data-validation" and story.kind == "markdown"
    text = story.body
    assert "**1 of 2 expectations met**; 12 of 100 primary rows dropped." in text
    rows = [line for line in text.splitlines() if line.startswith("| t |")]
    assert rows[0] == "| t | expect_column_values_to_be_between | b\\|c | **failed** | 12 |"
    assert rows[1].endswith("| met | 0 |")
    assert "[file:///docs/index.html](file:///docs/index.html)" in text


def test_metrics_put_the_champion_beside_only_when_there_was_one() -> None:
    first = metrics_story("d", evaluation(), GateDecision(True, "no champion yet", None, None))
    assert first.body[0] == {"metric": "test ROC AUC", "model": 0.8123, "baseline": 0.7, "champion": None}
    later = metrics_story("d", evaluation(), GateDecision(False, "x", "3", 0.83))
    assert later.body[0]["champion"] == 0.83 and all(r["champion"] is None for r in later.body[1:])
    assert later.body[3] == {"metric": "valid ROC AUC", "model": 0.8, "baseline": None, "champion": None}


def test_gate_and_mlflow_and_failure() -> None:
    registration = Registration("m", "4", "abc123", reused=False)
    gate = gate_story("d", registration, GateDecision(False, "test_auc 0.7 does not beat", "3", 0.8, ["challenger"]))
    assert gate.body.splitlines()[0] == "## m v4: not promoted" and "Champion before the decision: v3." in gate.body
    local = mlflow_links("d", "sqlite:////h/mlflow.db", registration)
    assert [a.kind for a in local] == ["markdown"] and "abc123" in local[0].body
    server = mlflow_links("d", "http://mlflow:5000/", registration)
    assert [a.body for a in server] == ["http://mlflow:5000/#/runs/abc123", "http://mlflow:5000/#/models/m/versions/4"]
    failed = failure_story("d", "validate", "3 expectations failed", "/q/b1")
    assert failed.key == artifact_key("d", "failure") == "d-failure" and "`/q/b1`" in failed.body
