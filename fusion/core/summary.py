"""The summary a run ends with: what `fusion run --json` prints."""

from __future__ import annotations

from pydantic import BaseModel, Field

# The lake folder of the run ledger: `runs/<dataset>/<finished at>-<run id>.json`, one summary per run
# (tasks/pipeline_run.py writes it, `fusion status` reads it).
RUNS = ("runs",)


class RunMetrics(BaseModel):
    test_auc: float | None = None
    test_pr_auc: float | None = None
    test_logloss: float | None = None
    baseline_auc: float | None = None


class StageReport(BaseModel):
    stage: str
    seconds: float
    cached: bool


class RunSummary(BaseModel):
    run_id: str | None = None
    dataset: str
    batch_id: str | None = None
    rows_ingested: int | None = None
    rows_rejected: int | None = None
    validation_success: bool | None = None
    metrics: RunMetrics = Field(default_factory=RunMetrics)
    model_family: str | None = None  # lightgbm or torch: the registered one
    device: str | None = None  # what it trained on
    device_reason: str | None = None  # e.g. model.device auto without a GPU worker: CPU
    family_valid_auc: dict[str, float] = Field(default_factory=dict)  # model.family best: each family's
    model_name: str | None = None
    model_version: str | None = None
    aliases: list[str] = Field(default_factory=list)
    promoted: bool = False
    gate_reason: str | None = None
    mlflow_run_id: str | None = None
    online_features: str | None = None  # manifest of the materialized online state
    data_docs: str | None = None
    quarantine_uri: str | None = None
    traceparent: str | None = None
    stages: list[StageReport] = Field(default_factory=list)
    duration_s: float = 0.0
    finished_at: str | None = None  # ISO 8601, UTC
    error: str | None = None
    failed_stage: str | None = None  # the stage that was running when the run failed (config, ingest, ...)
