"""A run's metrics as it pushes them: what a success and a failure each carry (tests/serving/test_prometheus.py
pushes them to a real Pushgateway and reads them back from Prometheus)."""

from __future__ import annotations

from prometheus_client.exposition import generate_latest

from fusion.core.summary import RunMetrics, RunSummary, StageReport
from tasks.run_metrics import push_run_metrics, run_registry


def samples(summary: RunSummary, rows: dict[tuple[str, str], int]) -> dict[str, float]:
    text = generate_latest(run_registry(summary, rows, now=1000.0)).decode()
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }


def test_a_successful_run_pushes_its_stages_rows_scores_and_success_time() -> None:
    summary = RunSummary(
        dataset="flights",
        validation_success=True,
        model_version="3",
        promoted=False,
        metrics=RunMetrics(test_auc=0.71, baseline_auc=0.6),
        stages=[
            StageReport(stage="ingest", seconds=1.5, cached=False),
            StageReport(stage="train", seconds=9, cached=True),
        ],
        duration_s=12.0,
    )
    got = samples(summary, {("validate", "in"): 100, ("validate", "rejected"): 3})
    assert got == {
        'fusion_pipeline_stage_seconds{cached="false",stage="ingest"}': 1.5,
        'fusion_pipeline_stage_seconds{cached="true",stage="train"}': 9.0,
        'fusion_pipeline_rows{kind="in",stage="validate"}': 100.0,
        'fusion_pipeline_rows{kind="rejected",stage="validate"}': 3.0,
        "fusion_pipeline_run_seconds": 12.0,
        "fusion_pipeline_validation_success": 1.0,
        "fusion_pipeline_gate_promoted": 0.0,
        'fusion_model_auc{split="test"}': 0.71,
        'fusion_model_auc{split="baseline"}': 0.6,
        "fusion_pipeline_last_success_timestamp_seconds": 1000.0,
    }


def test_a_failed_run_pushes_its_failure_and_leaves_the_last_success_alone() -> None:
    summary = RunSummary(dataset="flights", validation_success=False, error="validate: 3 rows", failed_stage="validate")
    got = samples(summary, {})
    assert got["fusion_pipeline_validation_success"] == 0.0
    assert got["fusion_pipeline_last_failure_timestamp_seconds"] == 1000.0
    assert got['fusion_pipeline_last_failure_info{stage="validate"}'] == 1.0
    # push-add replaces only the names pushed: the success timestamp is not among them, nor a gate decision
    assert not any(
        k.startswith(("fusion_pipeline_last_success", "fusion_pipeline_gate", "fusion_model_auc")) for k in got
    )


def test_no_gateway_pushes_nothing_and_an_unreachable_one_only_warns() -> None:
    summary = RunSummary(dataset="flights")
    assert push_run_metrics(None, summary, {}) is False
    assert push_run_metrics("http://127.0.0.1:9", summary, {}) is False  # nothing listens on the discard port
