"""Flow `training_pipeline`: config -> ingest -> validate -> features -> train -> evaluate -> register
-> promote -> online features (the per-group state serving reads).

Composition only: which stages run, in which order, with which inputs. The work is in tasks/; a
run's bookkeeping (timing, events, summary, failure report) in tasks/pipeline_run.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow
from prefect.runtime import flow_run
from prefect_dask import DaskTaskRunner

from fusion.core.errors import ConfigError, FusionError, RunFailed
from fusion.core.lake import Lake
from fusion.core.settings import DEFAULT_CONFIG, DaskConfig, Settings, WorkerEnvironment, load_settings, with_overrides
from fusion.core.summary import RunSummary
from tasks import pipeline_tasks as stages
from tasks.check import checked_suites
from tasks.local_cluster import local_cluster_kwargs
from tasks.pipeline_run import PipelineRun

__all__ = ["RunFailed", "run_pipeline", "task_runner_for", "training_pipeline"]


def task_runner_for(settings: Settings) -> DaskTaskRunner:
    """An existing cluster when FUSION_DASK_ADDRESS is set (or `pipeline.dask.cluster: address`), a
    DaskCluster on Kubernetes for `kubernetes`, else a LocalCluster sized by settings."""
    return dask_runner(settings.dask_address, settings.pipeline.dask)


def deployment_task_runner() -> DaskTaskRunner:
    """The runner of runs a worker starts from a deployment: it is fixed when the worker's process imports
    this module, before the run's config is read, so it comes from that process's environment
    (FUSION_DASK_ADDRESS, FUSION_PIPELINE__DASK__*; set them on the worker or in the deployment's
    job_variables.env). `fusion run` chooses per config with `task_runner_for`."""
    worker = WorkerEnvironment()
    return dask_runner(worker.dask_address, worker.pipeline.dask)


def dask_runner(address: str | None, local: DaskConfig) -> DaskTaskRunner:
    if local.cluster == "kubernetes":
        return DaskTaskRunner(
            cluster_class="tasks.kube_cluster.FusionKubeCluster",
            cluster_kwargs={"config": local.kubernetes.model_dump(mode="json")},
        )
    if local.cluster == "address" and not address:
        raise ConfigError("pipeline.dask.cluster is address but dask_address (FUSION_DASK_ADDRESS) is not set")
    if address:
        return DaskTaskRunner(address=address)
    return DaskTaskRunner(cluster_class="distributed.LocalCluster", cluster_kwargs=local_cluster_kwargs(local))


@flow(
    name="training_pipeline",
    task_runner=deployment_task_runner(),  # type: ignore[arg-type]  # prefect-dask's generics lag Prefect's
)
def training_pipeline(
    config: str = str(DEFAULT_CONFIG),
    traceparent: str | None = None,
    source_uri: str | None = None,
    overrides: dict[str, Any] | None = None,
    settings: Settings | None = None,
) -> RunSummary:
    """One run. `source_uri` replaces the primary table's URI (a new batch); `overrides` is a settings-tree
    fragment on top of the config and the environment; `settings`, when the caller has loaded them
    already (`fusion run`), are used as given instead of reading `config` again."""
    settings = settings or with_overrides(load_settings(config), overrides, source_uri)
    dataset, home = settings.dataset, str(settings.resolved_home)
    lake, registry = Lake(settings.resolved_lake_uri), settings.resolved_mlflow_uri
    with PipelineRun(settings, traceparent, str(flow_run.id) if flow_run.id else None) as run:
        try:
            suites = run.check("config", checked_suites, settings)
            fingerprints = run.stage("fingerprint", stages.fingerprint_sources, dataset.source)
            batch = run.stage("ingest", stages.ingest, dataset.name, dataset.source, fingerprints, lake)
            run.ingested(batch, dataset.source.primary)
            valid = run.stage(
                "validate", stages.validate, batch, suites, dataset.validation, dataset.source.primary, lake, home
            )
            run.validated(valid)
            features = run.stage("features", stages.build_feature_table, valid, dataset, lake)
            run.featured(features)
            trained = run.stage(
                "train", stages.train, features, dataset, lake, settings.pipeline.dask.threads_per_worker
            )
            run.trained(trained)
            evaluation = run.stage("evaluate", stages.evaluate, trained, features, dataset, lake)
            run.evaluated(evaluation)
            report = {"validation_report.json": valid.report_uri}
            registration = run.stage(
                "register", stages.register, trained, evaluation, features, dataset, lake, report, registry
            )
            run.registered(registration, evaluation)
            decision = run.stage("promote", stages.promote, registration, evaluation, features, dataset, lake, registry)
            run.decided(decision, registration, evaluation)
            online = run.stage("online-features", stages.materialize_online, valid, dataset, lake, settings.redis_url)
            run.materialized(online)
        except FusionError as exc:
            raise run.failed(exc) from exc
        return run.finish()


def run_pipeline(
    settings: Settings | str | Path | None = None,
    traceparent: str | None = None,
    source_uri: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> RunSummary:
    """Run the flow with the task runner the settings choose; a failed run raises RunFailed.

    `settings`: loaded settings (used as they are), or a config path to read (default configs/flights.yaml)."""
    if not isinstance(settings, Settings):
        settings = load_settings(settings or DEFAULT_CONFIG)
    settings = with_overrides(settings, overrides, source_uri)
    pipeline = training_pipeline.with_options(task_runner=task_runner_for(settings))  # type: ignore[arg-type]
    state = pipeline(traceparent=traceparent, settings=settings, return_state=True)
    # _sync: in a process with a running event loop (a Jupyter kernel) Prefect would otherwise hand back
    # a coroutine; this function is synchronous wherever it is called from
    outcome = state.result(raise_on_failure=False, _sync=True)  # type: ignore[call-overload]
    if isinstance(outcome, BaseException):
        raise outcome
    if not isinstance(outcome, RunSummary):
        raise RuntimeError(f"flow ended {state.name} without a summary: {outcome!r}")
    return outcome
