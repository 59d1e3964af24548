"""A run's Prometheus metrics, pushed to a Pushgateway (`pushgateway_url`, FUSION_PUSHGATEWAY_URL) when the
run ends. A run is a batch job: nothing of it stays up to be scraped, so it pushes what it did, and
Prometheus scrapes the gateway (`honor_labels: true`).

Grouping key `job="fusion_pipeline", dataset=<name>`. Each push replaces only the metrics it carries
(push-add), so a failed run keeps the last success's timestamp: the "no successful run in 26 h" alert
reads `fusion_pipeline_last_success_timestamp_seconds`. Every value describes the last run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Gauge, pushadd_to_gateway

from fusion.core.summary import RunSummary

log = logging.getLogger(__name__)
JOB = "fusion_pipeline"


def run_registry(
    summary: RunSummary, rows: Mapping[tuple[str, str], int], now: float | None = None
) -> CollectorRegistry:
    """The metrics of one finished (or failed) run. `rows`: (stage, kind) -> rows, kind in, out or rejected."""
    now = time.time() if now is None else now
    registry = CollectorRegistry()
    stage_seconds = Gauge(
        "fusion_pipeline_stage_seconds",
        "wall time of each stage in the last run",
        ["stage", "cached"],
        registry=registry,
    )
    for stage in summary.stages:
        stage_seconds.labels(stage.stage, str(stage.cached).lower()).set(stage.seconds)
    counted = Gauge(
        "fusion_pipeline_rows", "rows of the last run by stage and kind", ["stage", "kind"], registry=registry
    )
    for (name, kind), count in rows.items():
        counted.labels(name, kind).set(count)
    Gauge("fusion_pipeline_run_seconds", "wall time of the last run", registry=registry).set(summary.duration_s)
    if summary.validation_success is not None:
        Gauge(
            "fusion_pipeline_validation_success",
            "1 if the last validated batch passed, 0 if it failed",
            registry=registry,
        ).set(int(summary.validation_success))
    if summary.model_version is not None:  # the gate decided
        Gauge("fusion_pipeline_gate_promoted", "1 if the last run's model was promoted", registry=registry).set(
            int(summary.promoted)
        )
    auc = Gauge("fusion_model_auc", "ROC AUC of the last run's model and baseline", ["split"], registry=registry)
    for split, score in (("test", summary.metrics.test_auc), ("baseline", summary.metrics.baseline_auc)):
        if score is not None:
            auc.labels(split).set(score)
    outcome = "failure" if summary.error else "success"
    Gauge(
        f"fusion_pipeline_last_{outcome}_timestamp_seconds", f"when the last {outcome}ful run ended", registry=registry
    ).set(now)
    if summary.error:
        Gauge(
            "fusion_pipeline_last_failure_info", "the stage the last failed run failed in", ["stage"], registry=registry
        ).labels(summary.failed_stage or "unknown").set(1)
    return registry


def push_run_metrics(gateway: str | None, summary: RunSummary, rows: Mapping[tuple[str, str], int]) -> bool:
    """Push the run's metrics; a gateway that cannot be reached costs a warning, never the run."""
    if not gateway:
        return False
    try:
        pushadd_to_gateway(
            gateway, job=JOB, registry=run_registry(summary, rows), grouping_key={"dataset": summary.dataset}, timeout=5
        )
    except Exception as exc:  # metrics describe the run; they do not decide it
        log.warning("could not push run metrics to %s: %s", gateway, exc)
        return False
    return True
