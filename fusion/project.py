"""A small Python API for notebooks: the pipeline's own task functions, one call at a time.

    from fusion.project import Project

    project = Project.open("configs/flights.yaml", overrides={"dataset": {"model": {"num_boost_round": 300}}})
    tables = project.tables()                    # the latest validated batch, from the lake
    report = project.validate(tables)            # Great Expectations, nothing quarantined
    frame = project.features(tables, rolling=[...])   # a changed feature spec, point in time as in runs
    experiment = project.train(frame, model={"params": {"num_leaves": 31}})
    project.compare(experiment)                  # beside the baseline and the champion, same test split
    project.log(experiment, "wider leaves")      # an MLflow run in the dataset's experiment
    project.runs(); project.champion(); project.predict(frame.head(5))

Every step calls the functions the flow's stages call (tasks/), so a notebook's features, split, model
and metrics are the pipeline's; what differs is that nothing here registers, promotes or quarantines.
A full run is `project.run()`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from fusion.core.lake import Lake
from fusion.core.settings import DEFAULT_CONFIG, DatasetConfig, Settings, deep_merge, load_settings, with_overrides
from fusion.core.summary import RunSummary
from fusion.status import recent_runs
from tasks import features as feature_code
from tasks.evaluate import Evaluation, evaluate_model
from tasks.families import train_in_process
from tasks.ingest import enforce_schema, parse_table, read_source_bytes
from tasks.train import SplitFrames, TrainedModel, split_frames
from tasks.validate import load_suites, validate_tables


@dataclass(frozen=True)
class Experiment:
    """A model trained in a notebook: its dataset config (with the notebook's changes), the split it used,
    the model and its evaluation beside the baseline."""

    dataset: DatasetConfig
    parts: SplitFrames
    trained: TrainedModel
    evaluation: Evaluation

    @property
    def test_auc(self) -> float:
        return self.evaluation.test_auc


class Project:
    """One dataset config, its FUSION_HOME (lake, MLflow registry, GX project) and the pipeline's steps."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.lake = Lake(settings.resolved_lake_uri)

    @classmethod
    def open(
        cls,
        config: str | Path = DEFAULT_CONFIG,
        overrides: dict[str, Any] | None = None,
        home: str | Path | None = None,
    ) -> Project:
        """The config (with its local overlay and FUSION_* env, as `fusion run` reads it), a settings-tree
        fragment on top (`{"dataset": {"gate": {"min_delta": 0.01}}}`), and optionally another home."""
        from fusion.runtime import prepare_environment

        settings = load_settings(config)
        changes = deep_merge(overrides or {}, {"home": str(home)} if home is not None else {})
        settings = with_overrides(settings, changes)
        prepare_environment(settings)  # Prefect, MLflow and GX state under this home, quiet and offline
        return cls(settings)

    @property
    def dataset(self) -> DatasetConfig:
        return self.settings.dataset

    def changed(self, **changes: Any) -> DatasetConfig:
        """The dataset config with changes deep-merged in (`features={...}`, `model={...}`, `split={...}`)."""
        merged = deep_merge(self.dataset.model_dump(), changes)
        return DatasetConfig.model_validate(merged)

    # --- data ------------------------------------------------------------------------------------

    def batches(self) -> list[str]:
        """Batch ids that passed validation in this home, newest first (from the run ledger)."""
        runs = recent_runs(self.lake, limit=10_000)
        ok = [r.batch_id for r in runs if r.dataset == self.dataset.name and r.validation_success and r.batch_id]
        return list(dict.fromkeys(ok))

    def tables(self, batch: str | None = None) -> dict[str, pl.DataFrame]:
        """The validated tables of a batch (default the newest) as the pipeline stored them in the lake."""
        batch = batch or next(iter(self.batches()), None)
        if batch is None:
            raise LookupError(f"no validated batch of {self.dataset.name!r} in {self.lake.uri}: run the pipeline first")
        return {
            table: self.lake.read_parquet(self.lake.path("validated", self.dataset.name, batch, f"{table}.parquet"))
            for table in self.dataset.source.tables
        }

    def read_sources(self) -> dict[str, pl.DataFrame]:
        """The configured sources read now and typed by the config's schema (not landed in the lake)."""
        return {
            name: enforce_schema(parse_table(read_source_bytes(cfg.uri), cfg.uri, name, cfg), name, cfg)
            for name, cfg in self.dataset.source.tables.items()
        }

    def validate(self, tables: dict[str, pl.DataFrame] | None = None) -> pl.DataFrame:
        """Every expectation of the config's suites on the tables (default the newest batch): one row each
        with its outcome and unexpected count. Nothing is quarantined or dropped."""
        frames = tables if tables is not None else self.tables()
        suites, home = load_suites(self.settings), self.settings.resolved_home
        runs = validate_tables(frames, suites, self.dataset.name, home, self.dataset.validation.batch_rows)
        rows = [
            {
                "table": o.table,
                "expectation": o.expectation,
                "column": o.column,
                "success": o.success,
                "unexpected": o.unexpected_count,
                "row_level": o.row_level,
            }
            for run in runs.values()
            for o in run.outcomes
        ]
        return pl.DataFrame(rows).sort("success", "table")

    # --- features and models ---------------------------------------------------------------------

    def features(self, tables: dict[str, pl.DataFrame] | None = None, **spec_changes: Any) -> pl.DataFrame:
        """The feature table of the tables (default the newest batch) by the config's feature spec with
        `spec_changes` merged in (e.g. `rolling=[...]` replaces the rolling list), with the target."""
        dataset = self.changed(features=spec_changes) if spec_changes else self.dataset
        frames = tables if tables is not None else self.tables()
        return feature_code.build_features(
            frames, dataset.source.primary, dataset.features, dataset.prediction_time, dataset.target
        )

    def split(self, frame: pl.DataFrame, dataset: DatasetConfig | None = None) -> SplitFrames:
        """The pipeline's split of a feature table (the config's `split`)."""
        return split_frames(frame, dataset or self.dataset)

    def train(self, frame: pl.DataFrame, **changes: Any) -> Experiment:
        """Train and evaluate on the config's split of `frame`, with changes to the dataset config merged in
        (`model={"params": {"num_leaves": 31}}`); the feature columns are those of `features=` if given."""
        dataset = self.changed(**changes) if changes else self.dataset
        names = [c for c in feature_code.feature_names(dataset.features) if c in frame.columns]
        categorical = feature_code.categorical_names(frame, names)
        parts = self.split(frame, dataset)
        threads = self.settings.pipeline.dask.threads_per_worker
        trained = train_in_process(parts, names, categorical, dataset.target.name, dataset, threads)
        digest = trained.model.digest()[:12]
        report_dir = self.lake.path("notebooks", dataset.name, digest)
        model = dataset.model
        args = (categorical, dataset.target.name, model.baseline, self.lake, report_dir, model.baseline_rows)
        evaluation = evaluate_model(trained, parts, *args)
        return Experiment(dataset, parts, trained, evaluation)

    def compare(self, experiment: Experiment) -> pl.DataFrame:
        """The experiment's test metrics beside its baseline and the current champion, the champion
        re-scored on the experiment's own test split (as the gate does)."""
        from tasks.register import load_registered, score_on

        e = experiment.evaluation
        target = experiment.dataset.target.name
        champion = self.champion()
        champion_auc = None
        if champion is not None:
            model = load_registered(self.settings.resolved_mlflow_uri, self.dataset.model.registered_name, "champion")
            champion_auc = score_on(model, experiment.parts.test, target)
        return pl.DataFrame(
            {
                "model": ["experiment", "baseline", f"champion v{champion['version']}" if champion else "champion"],
                "test_auc": [e.test_auc, e.baseline_auc, champion_auc],
                "test_pr_auc": [e.test_pr_auc, e.baseline_pr_auc, None],
                "test_logloss": [e.test_logloss, e.baseline_logloss, None],
            }
        )

    def log(self, experiment: Experiment, name: str) -> str:
        """An MLflow run in the dataset's experiment (`fusion-<dataset>`) with the experiment's params,
        metrics and dataset config; not registered. Returns the run id."""
        import mlflow

        from tasks.register import ensure_experiment, run_params

        uri = self.settings.resolved_mlflow_uri
        mlflow.set_tracking_uri(uri)
        client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
        ensure_experiment(client, uri, f"fusion-{experiment.dataset.name}")
        with mlflow.start_run(run_name=name) as run:
            mlflow.log_params({**run_params(experiment.trained, experiment.evaluation, experiment.dataset, "notebook")})
            mlflow.log_metrics(experiment.evaluation.metrics())
            mlflow.log_dict(experiment.dataset.model_dump(mode="json"), "config/dataset_config.json")
            mlflow.set_tags({"fusion.dataset": experiment.dataset.name, "fusion.source": "notebook"})
        return str(run.info.run_id)

    # --- registry --------------------------------------------------------------------------------

    def runs(self) -> pl.DataFrame:
        """The MLflow runs of the dataset's experiment, newest first: id, name, test and baseline AUC."""
        import mlflow

        mlflow.set_tracking_uri(self.settings.resolved_mlflow_uri)
        found = mlflow.search_runs(experiment_names=[f"fusion-{self.dataset.name}"], order_by=["start_time DESC"])
        if found.empty:
            return pl.DataFrame()
        wanted = ["run_id", "tags.mlflow.runName", "start_time", "metrics.test_auc", "metrics.baseline_auc"]
        picked = found[[c for c in wanted if c in found.columns]].rename(
            columns={
                "tags.mlflow.runName": "name",
                "metrics.test_auc": "test_auc",
                "metrics.baseline_auc": "baseline_auc",
            }
        )
        return pl.from_pandas(picked)

    def champion(self) -> dict[str, Any] | None:
        """The champion version of the dataset's model, or None."""
        from fusion.status import champions

        found = champions(self.settings.resolved_mlflow_uri, [self.dataset.model.registered_name])
        info = found[self.dataset.model.registered_name]
        return info if info["version"] is not None else None

    def predict(self, frame: pl.DataFrame, model: str = "champion") -> np.ndarray:
        """Probabilities of a registered model on feature rows: `model` is an alias (`champion`), a
        version number, or `runs:/<run id>/model`."""
        import mlflow.pyfunc

        from tasks.register import load_registered

        uri = self.settings.resolved_mlflow_uri
        if model.startswith("runs:/"):
            mlflow.set_tracking_uri(uri)  # runs:/ URIs resolve against the tracking URI
            loaded = mlflow.pyfunc.load_model(model)
        else:
            loaded = load_registered(uri, self.dataset.model.registered_name, model)
        columns = [c.name for c in loaded.metadata.get_input_schema().inputs]
        return np.asarray(loaded.predict(frame.select(columns).to_pandas()))

    def run(self) -> RunSummary:
        """The whole pipeline with these settings, as `fusion run` does it."""
        from flows.training_pipeline import run_pipeline

        return run_pipeline(self.settings)
