"""One run's bookkeeping, so the flow only says which stages run in which order: each stage submitted,
timed and noted as cached or not; the event each stage announces; the summary; the failure report.

A failure is labelled by the stage that was running when it happened (`evaluate: ...`), never by a
name the flow keeps by hand.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import time
from typing import Any

from prefect.futures import PrefectFuture

from fusion.core import tracing
from fusion.core.errors import FusionError, RunFailed
from fusion.core.events import CloudEvent, EventSink, EventType, child_traceparent, new_traceparent
from fusion.core.lake import Lake
from fusion.core.logs import json_everywhere, log_context
from fusion.core.settings import PipelineConfig, Settings
from fusion.core.summary import RUNS, RunMetrics, RunSummary, StageReport
from tasks import pipeline_tasks as stages
from tasks.evaluate import Evaluation
from tasks.features import FeatureSet
from tasks.ingest import IngestedBatch
from tasks.online_store import Materialized
from tasks.register import GateDecision, Registration
from tasks.run_metrics import push_run_metrics
from tasks.run_story import Artifact, failure_story, gate_story, metrics_story, mlflow_links, validation_story
from tasks.train import TrainedModel
from tasks.validate import ValidatedBatch

progress = logging.getLogger("fusion.progress")
log = logging.getLogger(__name__)
SOURCE = "/fusion/flows/training_pipeline"
DATA_STAGES = ("fingerprint", "ingest", "validate")  # a failure here rejects the batch


class PipelineRun:
    """Used as a context manager around the flow's body: the run's span (a child of the request's
    traceparent) and its log context (run_id, dataset, trace and span ids) last as long as the block."""

    def __init__(self, settings: Settings, traceparent: str | None, run_id: str | None) -> None:
        self.pipeline: PipelineConfig = settings.pipeline
        self.dataset = settings.dataset.name
        tracing.setup_tracing("fusion-pipeline")
        json_everywhere()  # handlers the libraries installed in this process since it started
        self._span = tracing.start_span(
            f"run {self.dataset}", traceparent, {"fusion.dataset": self.dataset, "fusion.run_id": run_id}
        )
        # the run's own traceparent: the request's trace (a new one without a request), this run's span;
        # with the SDK off, the request's
        traceparent = tracing.traceparent_of(self._span) or traceparent or new_traceparent()
        self.traceparent = self.stage_traceparent = traceparent
        self._scope = contextlib.ExitStack()
        self.sink = EventSink(settings.resolved_home, settings.kafka_bootstrap_servers, settings.events)
        self.summary = RunSummary(run_id=run_id, dataset=self.dataset, traceparent=traceparent)
        self.tracking_uri = settings.resolved_mlflow_uri
        self.lake = Lake(settings.resolved_lake_uri)
        self.pushgateway = settings.pushgateway_url
        self.rows: dict[tuple[str, str], int] = {}  # (stage, kind) -> rows, for the run's metrics
        self.stage_name = "run"
        self._pending: PrefectFuture[Any] | None = None  # the last announced event, until sent
        self.started = time.perf_counter()
        self.tag(f"dataset:{self.dataset}", f"trace:{traceparent.split('-')[1]}")

    def __enter__(self) -> PipelineRun:
        from opentelemetry import trace

        self._scope.enter_context(trace.use_span(self._span, end_on_exit=False))
        self._scope.enter_context(log_context(run_id=self.summary.run_id, dataset=self.dataset))
        return self

    def __exit__(self, kind: Any, error: BaseException | None, tb: Any) -> None:
        self.sent(raise_on_failure=False)  # an event still in flight when the run broke off is sent first
        self._scope.close()
        tracing.end_span(self._span, error)
        tracing.flush()

    def tag(self, *tags: str) -> None:
        """Add tags to this flow run (the Prefect UI filters runs by them): dataset, batch, trace id."""
        if self.summary.run_id is None:
            return
        from uuid import UUID

        from prefect.client.orchestration import get_client

        try:
            with get_client(sync_client=True) as client:
                flow_run = client.read_flow_run(UUID(self.summary.run_id))
                client.update_flow_run(flow_run.id, tags=sorted({*flow_run.tags, *tags}))
        except Exception:  # the tags are for people; the run goes on without them
            log.warning("could not tag flow run %s with %s", self.summary.run_id, tags, exc_info=True)

    def publish(self, artifact: Artifact) -> None:
        """One part of the run's story as a Prefect artifact of this flow run (tasks/run_story.py)."""
        from prefect import artifacts

        try:
            if artifact.kind == "markdown":
                artifacts.create_markdown_artifact(artifact.body, key=artifact.key, description=artifact.description)
            elif artifact.kind == "table":
                artifacts.create_table_artifact(artifact.body, key=artifact.key, description=artifact.description)
            else:
                artifacts.create_link_artifact(
                    artifact.body, link_text=artifact.link_text, key=artifact.key, description=artifact.description
                )
        except Exception:  # a report of the run, not its work
            log.warning("could not publish artifact %s", artifact.key, exc_info=True)

    def check(self, name: str, check: Any, *args: Any) -> Any:
        """A quick step in the flow's own process (no task, not reported): its failure is labelled `name`."""
        self.stage_name = name
        return check(*args)

    def stage(self, name: str, task: Any, *args: Any) -> Any:
        """Run one stage as a Prefect task and wait for it; I/O stages retry as `pipeline.retries` says."""
        self.stage_name = name
        started = time.perf_counter()
        with tracing.span(f"stage {name}", attributes={"fusion.stage": name}) as span, log_context(stage=name):
            self.stage_traceparent = tracing.traceparent_of(span) or child_traceparent(self.traceparent)
            future: PrefectFuture[Any] = self._configured(task, name).submit(*args)
            future.wait()
            result = future.result()
            seconds = time.perf_counter() - started
            cached = bool(future.state.name == "Cached")
            span.set_attribute("fusion.cached", cached)
            self.summary.stages.append(StageReport(stage=name, seconds=round(seconds, 3), cached=cached))
            progress.info("%s done in %.1f s%s", name, seconds, " (cached)" if cached else "")
        return result

    def announce(self, type_: EventType, data: dict[str, Any]) -> None:
        """The event of the stage that ran last, carrying that stage span's traceparent.

        Submitted, not waited for: the next stage starts while it is sent (a publish task's round trip
        through Prefect is ~0.1 s, five times a run). The next announcement, the run's end and its
        failure report wait for it first, so events leave in the order of the stages and a publish that
        fails for good still fails the run, a stage later at most."""
        self.sent()
        event = CloudEvent(
            source=SOURCE,
            type=type_,
            subject=self.dataset,
            traceparent=self.stage_traceparent,
            data={"run_id": self.summary.run_id, "dataset": self.dataset, **data},
        )
        self._pending = self._configured(stages.publish, f"publish {type_}").submit(self.sink, event)

    def sent(self, raise_on_failure: bool = True) -> None:
        """Wait for the last announced event (normally long sent: a stage ran since); raise its failure, or
        log it when the run is already failing for another reason."""
        pending, self._pending = self._pending, None
        if pending is None:
            return
        try:
            pending.result()
        except Exception:
            if raise_on_failure:
                raise
            log.warning("an event of this failing run was not sent", exc_info=True)

    def _configured(self, task: Any, name: str) -> Any:
        """The task with a readable run name (`ingest [flights]`), this run's cache choice, and
        `pipeline.retries` when it does I/O (`IO_TASKS`)."""
        options: dict[str, Any] = {
            "refresh_cache": None if self.pipeline.cache else True,
            "task_run_name": f"{name} [{self.dataset}]",
        }
        if task.name in stages.IO_TASKS:
            options |= {"retries": self.pipeline.retries, "retry_delay_seconds": self.pipeline.retry_delay_s}
        return task.with_options(**options)

    def ingested(self, batch: IngestedBatch, primary: str) -> None:
        self.summary.batch_id, self.summary.rows_ingested = batch.batch_id, batch.rows[primary]
        self.rows[("ingest", "out")] = batch.rows[primary]
        self.tag(f"batch:{batch.batch_id}")
        self.announce("fusion.data.ready", {"batch_id": batch.batch_id, "rows": batch.rows, "tables": batch.tables})

    def validated(self, valid: ValidatedBatch) -> None:
        self.summary.validation_success = True
        self.summary.rows_rejected, self.summary.data_docs = valid.rows_rejected, valid.docs_index
        self.rows |= {("validate", "in"): valid.rows_in, ("validate", "rejected"): valid.rows_rejected}
        data = {
            "batch_id": valid.batch_id,
            "rows_in": valid.rows_in,
            "rows_rejected": valid.rows_rejected,
            "rejected_by_table": valid.rejected_by_table,
            "report_uri": valid.report_uri,
            "data_docs": valid.docs_index,
        }
        self.announce("fusion.data.validated", data)
        self.publish(validation_story(self.dataset, valid))

    def featured(self, features: FeatureSet) -> None:
        self.rows[("features", "out")] = features.rows
        data = {
            "batch_id": features.batch_id,
            "rows": features.rows,
            "uri": features.path,
            "feature_spec_version": features.spec_version,
            "features": len(features.feature_columns),
        }
        self.announce("fusion.features.ready", data)

    def trained(self, trained: TrainedModel) -> None:
        self.summary.model_family, self.summary.device = trained.family, trained.device
        self.summary.device_reason = trained.device_reason or None
        self.summary.family_valid_auc = dict(trained.candidates)

    def evaluated(self, evaluation: Evaluation) -> None:
        metrics = {k: v for k, v in evaluation.metrics().items() if k in RunMetrics.model_fields}
        self.summary.metrics = RunMetrics(**metrics)

    def registered(self, registration: Registration, evaluation: Evaluation) -> None:
        self.summary.model_name, self.summary.model_version = registration.model_name, registration.version
        self.summary.mlflow_run_id = registration.run_id
        data = {
            "batch_id": self.summary.batch_id,
            "model_name": registration.model_name,
            "version": registration.version,
            "mlflow_run_id": registration.run_id,
            "metrics": evaluation.metrics(),
        }
        self.announce("fusion.model.trained", data)
        for link in mlflow_links(self.dataset, self.tracking_uri, registration):
            self.publish(link)

    def decided(self, decision: GateDecision, registration: Registration, evaluation: Evaluation) -> None:
        summary = self.summary
        summary.promoted, summary.aliases, summary.gate_reason = decision.promoted, decision.aliases, decision.reason
        self.publish(metrics_story(self.dataset, evaluation, decision))
        self.publish(gate_story(self.dataset, registration, decision))
        if decision.promoted:
            data = {
                "model_name": registration.model_name,
                "version": registration.version,
                "previous_version": decision.champion_version,
                "reason": decision.reason,
                "test_auc": evaluation.test_auc,
            }
            self.announce("fusion.model.promoted", data)

    def materialized(self, online: Materialized) -> None:
        self.summary.online_features = online.manifest_uri

    def failed(self, exc: FusionError) -> RunFailed:
        """The run's end on bad data or config: the summary names the stage; a batch that never
        passed validation is announced as rejected, with where it was quarantined."""
        summary = self.summary
        summary.error = f"{self.stage_name}: {exc}"
        summary.failed_stage = self.stage_name
        summary.duration_s = round(time.perf_counter() - self.started, 3)
        self.sent(raise_on_failure=False)  # this failure is the run's report, whatever became of an event
        if self.stage_name in DATA_STAGES:
            summary.validation_success = False if self.stage_name == "validate" else None
            summary.batch_id = summary.batch_id or exc.batch_id
            summary.quarantine_uri = exc.quarantine_uri
            data = {
                "batch_id": summary.batch_id,
                "stage": self.stage_name,
                "reason": str(exc),
                "quarantine_uri": summary.quarantine_uri,
            }
            self.announce("fusion.data.rejected", data)
            self.sent(raise_on_failure=False)
        self.publish(failure_story(self.dataset, self.stage_name, str(exc), summary.quarantine_uri))
        self.record()
        push_run_metrics(self.pushgateway, summary, self.rows)
        return RunFailed(summary.error, summary.model_dump_json())

    def finish(self) -> RunSummary:
        self.sent()
        self.summary.duration_s = round(time.perf_counter() - self.started, 3)
        self.record()
        push_run_metrics(self.pushgateway, self.summary, self.rows)
        return self.summary

    def record(self) -> None:
        """The summary into the lake's run ledger (`runs/<dataset>/<finished at>-<run id>.json`): what
        `fusion status` lists, with or without any service running."""
        finished = dt.datetime.now(dt.UTC)
        self.summary.finished_at = finished.isoformat(timespec="seconds")
        name = f"{finished.strftime('%Y%m%dT%H%M%S%fZ')}-{self.summary.run_id or 'local'}.json"
        try:
            self.lake.write_bytes(
                self.summary.model_dump_json(indent=2).encode(), self.lake.path(*RUNS, self.dataset, name)
            )
        except Exception:  # the run's own outcome stands; only its line in `fusion status` is missing
            log.warning("could not record run %s in the lake", self.summary.run_id, exc_info=True)
