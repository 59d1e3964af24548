"""Flow `training_pipeline`: ingest -> validate -> features -> train -> evaluate -> register -> promote
-> online features (the per-group state serving reads).

Composition only: which tasks, in which order, with which settings, and the
event each stage emits. The work is in tasks/.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.futures import PrefectFuture
from prefect.runtime import flow_run
from prefect_dask import DaskTaskRunner

from fusion.errors import FusionError
from fusion.events import CloudEvent, EventSink, child_traceparent, new_traceparent
from fusion.lake import Lake
from fusion.settings import DEFAULT_CONFIG, DaskConfig, Settings, load_settings, with_overrides
from fusion.summary import RunMetrics, RunSummary, StageReport
from tasks import pipeline_tasks as stages
from tasks.validate import load_suite

progress = logging.getLogger("fusion.progress")
SOURCE = "/fusion/flows/training_pipeline"


class RunFailed(FusionError):
    """A run that ended on bad data or config; carries the summary so far as JSON."""

    def __init__(self, message: str, summary_json: str = "{}") -> None:
        super().__init__(message, summary_json)
        self.message = message
        self.summary_json = summary_json

    def __str__(self) -> str:
        return self.message


def task_runner_for(settings: Settings) -> DaskTaskRunner:
    """An existing cluster when FUSION_DASK_ADDRESS is set, else a LocalCluster sized by settings."""
    return dask_runner(settings.dask_address, settings.pipeline.dask)


def deployment_task_runner() -> DaskTaskRunner:
    """The runner of runs a worker starts from a deployment: it is fixed when the worker's process imports
    this module, before the run's config is read, so it comes from that process's environment
    (FUSION_DASK_ADDRESS, FUSION_PIPELINE__DASK__*; set them on the worker or in the deployment's
    job_variables.env). `fusion run` chooses per config with `task_runner_for`."""
    given = {key: os.environ.get(f"FUSION_PIPELINE__DASK__{key.upper()}") for key in DaskConfig.model_fields}
    local = DaskConfig.model_validate({key: value for key, value in given.items() if value is not None})
    return dask_runner(os.environ.get("FUSION_DASK_ADDRESS") or None, local)


def dask_runner(address: str | None, local: DaskConfig) -> DaskTaskRunner:
    if address:
        return DaskTaskRunner(address=address)
    return DaskTaskRunner(
        cluster_class="distributed.LocalCluster",
        cluster_kwargs={
            "n_workers": local.n_workers,
            "threads_per_worker": local.threads_per_worker,
            "processes": local.processes,
            "dashboard_address": ":0",  # None still binds 8787
        },
    )


class StageRunner:
    """Submits one stage at a time, times it, notes cache hits and emits the stage's event."""

    def __init__(self, summary: RunSummary, sink: EventSink, dataset: str, traceparent: str, refresh: bool) -> None:
        self.summary = summary
        self.sink = sink
        self.dataset = dataset
        self.traceparent = traceparent
        self.refresh = refresh

    def run(self, name: str, task: Any, *args: Any) -> Any:
        started = time.perf_counter()
        future: PrefectFuture[Any] = task.with_options(refresh_cache=self.refresh or None).submit(*args)
        future.wait()
        result = future.result()
        seconds = time.perf_counter() - started
        cached = bool(future.state.name == "Cached")
        self.summary.stages.append(StageReport(stage=name, seconds=round(seconds, 3), cached=cached))
        progress.info("%s done in %.1f s%s", name, seconds, " (cached)" if cached else "", extra={"stage": name})
        return result

    def emit(self, type_: str, data: dict[str, Any]) -> None:
        event = CloudEvent(
            source=SOURCE,
            type=type_,  # type: ignore[arg-type]
            subject=self.dataset,
            traceparent=child_traceparent(self.traceparent),
            data={"run_id": self.summary.run_id, "dataset": self.dataset, **data},
        )
        stages.publish.submit(self.sink, event).result()


@flow(
    name="training_pipeline",
    task_runner=deployment_task_runner(),  # type: ignore[arg-type]  # prefect-dask's generics lag Prefect's
)
def training_pipeline(
    config: str = str(DEFAULT_CONFIG),
    traceparent: str | None = None,
    source_uri: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> RunSummary:
    """One run. `source_uri` replaces the primary table's URI (a new batch); `overrides` is a
    settings-tree fragment applied on top of the config and the environment."""
    started = time.perf_counter()
    settings = with_overrides(load_settings(config), overrides, source_uri)
    dataset = settings.dataset
    lake = Lake(settings.resolved_lake_uri)
    trace = traceparent or new_traceparent()
    summary = RunSummary(run_id=str(flow_run.id) if flow_run.id else None, dataset=dataset.name, traceparent=trace)
    sink = EventSink(settings.resolved_home, settings.kafka_bootstrap_servers, settings.events)
    runner = StageRunner(summary, sink, dataset.name, trace, refresh=not settings.pipeline.cache)
    stage = "ingest"
    try:
        fingerprints = runner.run("fingerprint", stages.fingerprint_sources, dataset.source)
        batch = runner.run("ingest", stages.ingest, dataset.name, dataset.source, fingerprints, lake)
        summary.batch_id, summary.rows_ingested = batch.batch_id, batch.rows[dataset.source.primary]
        runner.emit(
            "fusion.data.ready",
            {"batch_id": batch.batch_id, "rows": batch.rows, "tables": batch.tables},
        )

        stage = "validate"
        suites = {table: load_suite(settings.suite_path(table)) for table in dataset.validation.suites}
        gx_root = str(settings.resolved_home)  # GX keeps its project in <home>/gx
        valid = runner.run(
            "validate", stages.validate, batch, suites, dataset.validation, dataset.source.primary, lake, gx_root
        )
        summary.validation_success = True
        summary.rows_rejected, summary.data_docs = valid.rows_rejected, valid.docs_index
        runner.emit(
            "fusion.data.validated",
            {
                "batch_id": batch.batch_id,
                "rows_in": valid.rows_in,
                "rows_rejected": valid.rows_rejected,
                "report_uri": valid.report_uri,
                "data_docs": valid.docs_index,
            },
        )

        stage = "features"
        features = runner.run("features", stages.build_feature_table, valid, dataset, lake)
        runner.emit(
            "fusion.features.ready",
            {
                "batch_id": batch.batch_id,
                "rows": features.rows,
                "uri": features.path,
                "feature_spec_version": features.spec_version,
                "features": len(features.feature_columns),
            },
        )

        stage = "train"
        threads = settings.pipeline.dask.threads_per_worker
        trained = runner.run("train", stages.train, features, dataset, lake, threads)
        evaluation = runner.run("evaluate", stages.evaluate, trained, features, dataset, lake)
        summary.metrics = RunMetrics(**{k: v for k, v in evaluation.metrics().items() if k in RunMetrics.model_fields})

        stage = "register"
        tracking_uri = settings.resolved_mlflow_uri
        extra = {"validation_report.json": valid.report_uri}
        registration = runner.run(
            "register", stages.register, trained, evaluation, features, dataset, lake, extra, tracking_uri
        )
        summary.model_name, summary.model_version = registration.model_name, registration.version
        summary.mlflow_run_id = registration.run_id
        runner.emit(
            "fusion.model.trained",
            {
                "batch_id": batch.batch_id,
                "model_name": registration.model_name,
                "version": registration.version,
                "mlflow_run_id": registration.run_id,
                "metrics": evaluation.metrics(),
            },
        )
        decision = runner.run(
            "promote", stages.promote, registration, evaluation, features, dataset, lake, tracking_uri
        )
        summary.promoted, summary.aliases, summary.gate_reason = decision.promoted, decision.aliases, decision.reason
        if decision.promoted:
            runner.emit(
                "fusion.model.promoted",
                {
                    "model_name": registration.model_name,
                    "version": registration.version,
                    "previous_version": decision.champion_version,
                    "reason": decision.reason,
                    "test_auc": evaluation.test_auc,
                },
            )

        stage = "online-features"
        online = runner.run("online-features", stages.materialize_online, valid, dataset, lake, settings.redis_url)
        summary.online_features = online.manifest_uri
    except FusionError as exc:
        summary.error = f"{stage}: {exc}"
        summary.duration_s = round(time.perf_counter() - started, 3)
        if stage in ("ingest", "validate"):
            summary.validation_success = False
            summary.batch_id = summary.batch_id or exc.batch_id
            summary.quarantine_uri = exc.quarantine_uri
            runner.emit(
                "fusion.data.rejected",
                {
                    "batch_id": summary.batch_id,
                    "stage": stage,
                    "reason": str(exc),
                    "quarantine_uri": summary.quarantine_uri,
                },
            )
        raise RunFailed(summary.error, summary.model_dump_json()) from exc
    summary.duration_s = round(time.perf_counter() - started, 3)
    return summary


def run_pipeline(
    config: str | Path | None = None,
    traceparent: str | None = None,
    source_uri: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> RunSummary:
    """Run the flow with the task runner the settings choose; a failed run raises RunFailed."""
    path = str(config or DEFAULT_CONFIG)
    settings = with_overrides(load_settings(path), overrides, source_uri)
    pipeline = training_pipeline.with_options(task_runner=task_runner_for(settings))  # type: ignore[arg-type]
    state = pipeline(
        config=path, traceparent=traceparent, source_uri=source_uri, overrides=overrides, return_state=True
    )
    outcome = state.result(raise_on_failure=False)
    if isinstance(outcome, BaseException):
        raise outcome
    if not isinstance(outcome, RunSummary):
        raise RuntimeError(f"flow ended {state.name} without a summary: {outcome!r}")
    return outcome
