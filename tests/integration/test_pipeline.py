"""The whole flow, in process, on real data: Prefect (embedded API), Dask LocalCluster, GX, MLflow (sqlite)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from fusion.core.events import JsonlEventBus
from fusion.core.summary import RunSummary

pytestmark = pytest.mark.integration

STAGE_EVENTS = ["fusion.data.ready", "fusion.data.validated", "fusion.features.ready", "fusion.model.trained"]


def run(config: Path | None = None) -> RunSummary:
    from flows.training_pipeline import run_pipeline

    return run_pipeline(config)


def mlflow_client(home: Path) -> Any:
    from mlflow import MlflowClient

    uri = f"sqlite:///{home.resolve() / 'mlflow.db'}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def mlflow_versions(home: Path, name: str) -> list[Any]:
    client = mlflow_client(home)
    try:
        return list(client.search_model_versions(f"name = '{name}'"))
    except Exception:
        return []


@pytest.fixture(scope="module")
def sample_source(tmp_path_factory: pytest.TempPathFactory, flights_tables: dict[str, pl.DataFrame]) -> Path:
    """A third of the real flights (every third day), as a Parquet file."""
    path = tmp_path_factory.mktemp("source") / "flights_sample.parquet"
    flights_tables["flights"].filter(pl.col("day") % 3 == 0).write_parquet(path)
    return path


@pytest.fixture(scope="module")
def sample_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sample-home")


@pytest.fixture(scope="module")
def first_run(sample_home: Path, sample_source: Path) -> RunSummary:
    """The first run into the (then empty) sample home, done once for the module, whichever test asks first.

    Tests that run again in the sample home predict their outcome from this summary and from what the
    registry holds just before their own run, never from which other tests ran before them."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FUSION_HOME", str(sample_home))
        patch.setenv("FUSION_DATASET__SOURCE__TABLES__FLIGHTS__URI", str(sample_source))
        return run()


@pytest.fixture
def on_sample(monkeypatch: pytest.MonkeyPatch, sample_home: Path, sample_source: Path) -> Path:
    monkeypatch.setenv("FUSION_HOME", str(sample_home))
    monkeypatch.setenv("FUSION_DATASET__SOURCE__TABLES__FLIGHTS__URI", str(sample_source))
    return sample_home


def version_numbers(home: Path, name: str) -> set[int]:
    return {int(v.version) for v in mlflow_versions(home, name)}


def test_sample_run_end_to_end(first_run: RunSummary, on_sample: Path, sample_source: Path) -> None:
    summary = first_run
    assert summary.validation_success and summary.rows_rejected == 0
    assert summary.rows_ingested == pl.scan_parquet(sample_source).select(pl.len()).collect().item() > 100_000
    assert summary.metrics.test_auc is not None and summary.metrics.baseline_auc is not None
    assert summary.metrics.test_auc > summary.metrics.baseline_auc > 0.6
    assert summary.promoted and summary.aliases == ["challenger", "champion"] and summary.model_version == "1"
    assert summary.data_docs and Path(summary.data_docs.removeprefix("file://")).is_file()

    # Every stage announced itself, in order, on one trace.
    events = [
        e for e in JsonlEventBus(on_sample / "events" / "events.jsonl").read() if e.data.get("run_id") == summary.run_id
    ]
    assert [e.type for e in events] == [*STAGE_EVENTS, "fusion.model.promoted"]
    trace_ids = {e.traceparent.split("-")[1] for e in events if e.traceparent}
    assert summary.traceparent and trace_ids == {summary.traceparent.split("-")[1]}
    assert events[0].data["batch_id"] == summary.batch_id

    # The registered champion is the model that was evaluated: its own predict gives the same AUC.
    # (By this run's version and feature file: other tests may add versions and feature files later.)
    from sklearn.metrics import roc_auc_score

    from fusion.core.settings import load_settings
    from tasks.register import load_registered
    from tasks.train import split_frames

    settings = load_settings("configs/flights.yaml")
    champion = mlflow_client(on_sample).get_model_version_by_alias("flights_delay", "champion")
    assert str(champion.version) == summary.model_version
    model = load_registered(settings.resolved_mlflow_uri, "flights_delay", summary.model_version)
    features_path = Path(events[STAGE_EVENTS.index("fusion.features.ready")].data["uri"])
    assert summary.batch_id
    batch_dir = on_sample / "lake" / "features" / "flights" / summary.batch_id
    assert features_path.is_file() and features_path.parent.resolve() == batch_dir.resolve()
    test = split_frames(pl.read_parquet(features_path), settings.dataset).test
    columns = [c.name for c in model.metadata.get_input_schema().inputs]
    auc = roc_auc_score(test["delayed"].to_numpy(), model.predict(test.select(columns).to_pandas()))
    assert auc == pytest.approx(summary.metrics.test_auc, abs=1e-9)
    version = mlflow_client(on_sample).get_model_version("flights_delay", summary.model_version)
    assert version.tags["fusion.gate.decision"] == "promoted" and version.tags["fusion.batch_id"] == summary.batch_id
    # the model's files live in this FUSION_HOME, not in whatever directory the run started from
    artifacts = mlflow_client(on_sample).get_model_version_download_uri("flights_delay", version.version)
    assert Path(artifacts.removeprefix("file://")).resolve().is_relative_to((on_sample / "mlartifacts").resolve())


def test_the_prefect_run_tells_its_story(first_run: RunSummary) -> None:
    """What a data engineer sees in the Prefect UI: the flow run's tags, readable task run names, and
    the artifacts of validation, metrics beside the baseline, the gate and MLflow, read back from the API."""
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    assert first_run.run_id and first_run.traceparent and first_run.batch_id
    run_id = UUID(first_run.run_id)
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(run_id)
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])))
    by_key = run_artifacts(first_run.run_id)
    trace = first_run.traceparent.split("-")[1]
    assert {"dataset:flights", f"batch:{first_run.batch_id}", f"trace:{trace}"} <= set(flow_run.tags)
    names = {t.name for t in tasks}
    assert {"ingest [flights]", "validate [flights]", "train [flights]", "promote [flights]"} <= names
    assert "publish fusion.model.promoted [flights]" in names

    assert set(by_key) == {"flights-validation", "flights-metrics", "flights-gate", "flights-mlflow"}
    validation = str(by_key["flights-validation"])
    assert f"batch `{first_run.batch_id}`" in validation and "expectations met" in validation
    assert "expect_column_values_to_not_be_null" in validation and "Data Docs" in validation
    table = by_key["flights-metrics"]
    metrics = {row["metric"]: row for row in (json.loads(table) if isinstance(table, str) else table)}
    assert metrics["test ROC AUC"]["model"] == pytest.approx(first_run.metrics.test_auc, abs=1e-4)
    assert metrics["test ROC AUC"]["baseline"] == pytest.approx(first_run.metrics.baseline_auc, abs=1e-4)
    assert metrics["test ROC AUC"]["champion"] is None  # no champion before the first run
    gate = str(by_key["flights-gate"])
    assert f"flights_delay v{first_run.model_version}: promoted" in gate and (first_run.gate_reason or "?") in gate
    assert first_run.mlflow_run_id and first_run.mlflow_run_id in str(by_key["flights-mlflow"])


def test_fusion_status_lists_the_run_and_the_champion(first_run: RunSummary, on_sample: Path) -> None:
    from typer.testing import CliRunner

    from fusion.cli import app

    shown = CliRunner().invoke(app, ["status", "--json", "--runs", "50"])
    assert shown.exit_code == 0, shown.output
    state = json.loads(shown.stdout)
    runs = {r["run_id"]: r for r in state["runs"]}
    mine = runs[first_run.run_id]
    assert mine["ok"] and mine["batch_id"] == first_run.batch_id and mine["dataset"] == "flights"
    assert [s["stage"] for s in mine["stages"]] == [s.stage for s in first_run.stages]
    assert mine["test_auc"] == first_run.metrics.test_auc and mine["promoted"]
    champion = state["champions"]["flights_delay"]
    assert champion["version"] is not None and champion["test_auc"] > 0.6  # later tests may promote another
    assert set(state["serving"]) >= {"url", "up", "ready"} and isinstance(state["services"], dict)
    table = CliRunner().invoke(app, ["status"])
    assert table.exit_code == 0 and "champion of flights_delay: v" in table.stderr


def test_the_notebook_api_runs_the_pipelines_own_steps(first_run: RunSummary, on_sample: Path) -> None:
    """fusion.project: the run's batch read back, validated, its feature table rebuilt identically, a
    changed spec and model trained on the same split, compared with the champion, logged and predicted."""
    from fusion.project import Project

    project = Project.open("configs/flights.yaml")
    assert project.settings.resolved_home == on_sample.resolve()
    assert first_run.batch_id in project.batches()
    tables = project.tables(first_run.batch_id)
    assert tables["flights"].height == first_run.rows_ingested

    report = project.validate(tables)
    assert report.height > 10 and report["success"].all()

    # the first run's file by name: other tests' runs in this home with other configs write their own
    spec_version, fingerprint = project.dataset.features.version, project.dataset.fingerprint()
    written = (
        on_sample
        / "lake"
        / "features"
        / "flights"
        / first_run.batch_id
        / f"features-v{spec_version}-{fingerprint}.parquet"
    )
    frame = project.features(tables)
    assert frame.equals(pl.read_parquet(written))  # the run's own feature table, not a second implementation

    rolling = [r.model_dump() for r in project.dataset.features.rolling]
    rolling.append(
        {
            "name": "origin_dep_delay_1d",
            "by": ["origin"],
            "value": "dep_delay",
            "known_at": "dep_known_at",
            "windows_minutes": [1440],
            "aggs": ["mean"],
        }
    )
    wider = project.features(tables, rolling=rolling)
    assert "origin_dep_delay_1d_mean_1440m" in wider.columns and wider.height == frame.height

    experiment = project.train(wider, features={"rolling": rolling}, model={"num_boost_round": 60})
    assert "origin_dep_delay_1d_mean_1440m" in experiment.trained.model.features
    assert experiment.parts.record["digest"] == project.split(frame).record["digest"]  # the same split
    compared = project.compare(experiment)
    assert compared["model"].to_list()[:2] == ["experiment", "baseline"] and compared["test_auc"].null_count() == 0
    assert compared["test_auc"][0] == pytest.approx(experiment.test_auc)

    run_id = project.log(experiment, "notebook: 1-day origin window")
    assert run_id in project.runs()["run_id"].to_list()
    champion = project.champion()
    assert champion is not None
    predicted = project.predict(frame.head(50))
    assert predicted.shape == (50,) and ((predicted > 0) & (predicted < 1)).all()
    assert project.predict(frame.head(50), model=champion["version"]) == pytest.approx(predicted)


def test_second_run_hits_the_cache_and_reuses_the_version(first_run: RunSummary, on_sample: Path) -> None:
    versions_before = version_numbers(on_sample, "flights_delay")
    summary = run()
    cached = {s.stage: s.cached for s in summary.stages}
    assert cached == {
        "fingerprint": False,
        "ingest": True,
        "validate": True,
        "features": True,
        "train": True,
        "evaluate": True,
        "register": False,
        "promote": False,
        "online-features": False,  # never cached: Redis may have lost the state since
    }
    assert summary.batch_id == first_run.batch_id and summary.model_version == first_run.model_version
    assert not summary.promoted and summary.gate_reason == "already the champion"
    # no new version: the registry holds what it held before this run
    assert version_numbers(on_sample, "flights_delay") == versions_before


def test_config_change_invalidates_downstream_and_gate_judges(
    first_run: RunSummary, on_sample: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    versions_before = version_numbers(on_sample, "flights_delay")
    assert first_run.model_version and int(first_run.model_version) in versions_before
    monkeypatch.setenv("FUSION_DATASET__MODEL__PARAMS__NUM_LEAVES", "7")
    monkeypatch.setenv("FUSION_DATASET__GATE__MIN_DELTA", "0.5")  # impossible to beat: must not be promoted
    summary = run()
    cached = {s.stage: s.cached for s in summary.stages}
    assert cached["ingest"] and cached["validate"] and not cached["features"] and not cached["train"]
    # a new version, next in the registry's numbering, whichever tests ran in this home before
    new_version = str(max(versions_before) + 1)
    assert summary.model_version == new_version and not summary.promoted
    assert summary.aliases == ["challenger"] and "< min_delta 0.5" in (summary.gate_reason or "")
    versions = {str(v.version): v for v in mlflow_versions(on_sample, "flights_delay")}
    assert set(versions) == {*map(str, versions_before), new_version}
    assert versions[new_version].tags["fusion.gate.decision"] == "rejected"
    champion = mlflow_client(on_sample).get_model_version_by_alias("flights_delay", "champion")
    assert str(champion.version) == first_run.model_version


def flights_csv(flights: pl.DataFrame) -> pl.DataFrame:
    return flights.with_columns(pl.col("time_hour").dt.strftime("%Y-%m-%dT%H:%M:%SZ"))


def bad_wrong_type(path: Path, flights: pl.DataFrame) -> Path:
    frame = flights_csv(flights).with_columns(pl.col("dep_delay").cast(pl.String))
    frame = frame.with_columns(
        pl.when(pl.int_range(pl.len()) == 7).then(pl.lit("late")).otherwise(pl.col("dep_delay")).alias("dep_delay")
    )
    frame.write_csv(path / "flights.csv")
    return path / "flights.csv"


def bad_nulls(path: Path, flights: pl.DataFrame) -> Path:
    flights.with_columns(
        pl.when(pl.int_range(pl.len()) < 5).then(None).otherwise(pl.col("origin")).alias("origin")
    ).write_parquet(path / "f.parquet")
    return path / "f.parquet"


def bad_range(path: Path, flights: pl.DataFrame) -> Path:
    flights.with_columns(
        pl.when(pl.int_range(pl.len()) < 3).then(99).otherwise(pl.col("hour")).alias("hour")
    ).write_parquet(path / "f.parquet")
    return path / "f.parquet"


def bad_truncated(path: Path, flights: pl.DataFrame) -> Path:
    buf = io.BytesIO()
    flights.write_parquet(buf)
    (path / "f.parquet").write_bytes(buf.getvalue()[: len(buf.getvalue()) * 2 // 3])
    return path / "f.parquet"


@pytest.mark.parametrize(
    ("make_bad", "stage", "message"),
    [
        (
            bad_wrong_type,
            "ingest",
            "column flights.dep_delay: expected float64, found 1 value(s) that are not, e.g. 'late'",
        ),
        (bad_nulls, "validate", "flights.origin expect_column_values_to_not_be_null (5 rows)"),
        (bad_range, "validate", "flights.hour expect_column_values_to_be_between (3 rows)"),
        (bad_truncated, "ingest", "flights: cannot parse parquet"),
    ],
    ids=["wrong-type", "forbidden-nulls", "out-of-range", "truncated-parquet"],
)
def test_bad_data_is_quarantined_and_registers_nothing(
    make_bad: Any,
    stage: str,
    message: str,
    fusion_home: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    flights_tables: dict[str, pl.DataFrame],
) -> None:
    from flows.training_pipeline import RunFailed

    # A home of its own: what it finds there does not depend on which tests ran before.
    versions_before = len(mlflow_versions(fusion_home, "flights_delay"))
    bad = make_bad(tmp_path, flights_tables["flights"].head(20_000))
    monkeypatch.setenv("FUSION_DATASET__SOURCE__TABLES__FLIGHTS__URI", str(bad))
    with pytest.raises(RunFailed) as failure:
        run()
    summary = RunSummary.model_validate_json(failure.value.summary_json)
    assert summary.error and summary.error.startswith(f"{stage}: ") and message in summary.error
    assert summary.failed_stage == stage
    # validation failed, or never ran when ingest refused the batch
    assert summary.validation_success is (False if stage == "validate" else None) and summary.model_version is None
    assert summary.quarantine_uri and Path(summary.quarantine_uri, "reason.json").is_file()
    assert len(mlflow_versions(fusion_home, "flights_delay")) == versions_before
    last = JsonlEventBus(fusion_home / "events" / "events.jsonl").read()[-1]
    assert last.type == "fusion.data.rejected" and message in last.data["reason"]
    assert last.data["quarantine_uri"] == summary.quarantine_uri
    # the run ledger (fusion status) names the stage that failed
    from fusion.core.lake import Lake
    from fusion.status import recent_runs

    (recorded,) = recent_runs(Lake(str(fusion_home / "lake")))
    assert recorded.run_id == summary.run_id and recorded.failed_stage == stage and recorded.error == summary.error
    # and the Prefect UI says so beside the run
    assert run_artifacts(summary.run_id) == {
        "flights-failure": f"## The run failed in stage `{stage}`\n\n    {summary.error.removeprefix(f'{stage}: ')}"
        f"\n\nThe batch is in quarantine: `{summary.quarantine_uri}` (reason.json says why)."
    }


def run_artifacts(run_id: str | None) -> dict[str, Any]:
    """The Prefect artifacts of one flow run, by key."""
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    assert run_id
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[UUID(run_id)]))
        )
    return {a.key: a.data for a in found if a.key}  # keyless ones are Prefect's own (results)


def test_a_second_dataset_runs_from_its_config_alone(fusion_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.datasets.card_transactions import write

    paths = write(fusion_home / "examples")
    monkeypatch.setenv("FUSION_DATASET__SOURCE__TABLES__TRANSACTIONS__URI", str(paths["transactions"]))
    monkeypatch.setenv("FUSION_DATASET__SOURCE__TABLES__ACCOUNTS__URI", str(paths["accounts"]))
    summary = run(Path("configs/card_transactions.yaml"))
    assert summary.dataset == "card_transactions" and summary.model_name == "card_fraud"
    assert summary.validation_success and summary.promoted and "champion" in summary.aliases
    assert summary.metrics.test_auc is not None and summary.metrics.baseline_auc is not None
    assert summary.metrics.test_auc > 0.75 and summary.metrics.baseline_auc > 0.5
