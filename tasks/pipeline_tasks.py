"""Prefect tasks: each a thin call into the stage's pure function.

Kept apart from the stage modules so that serving can import the feature code
without importing Prefect. Stages are cached by their inputs plus a hash of
Fusion's own source, so unchanged data, config and code skip them, and a
change of any of the three runs them again.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE, CacheKeyFnPolicy
from prefect.utilities.hashing import hash_objects
from pydantic import SecretStr

from fusion.core.errors import FusionError
from fusion.core.events import CloudEvent, EventSink
from fusion.core.lake import Lake
from fusion.core.settings import DatasetConfig, SourceConfig, ValidationConfig
from tasks import features as feature_code
from tasks.evaluate import Evaluation, evaluate_model
from tasks.families import train_family
from tasks.ingest import IngestedBatch, ingest_tables, source_fingerprint
from tasks.online import online_state
from tasks.online_store import Materialized, load_into_redis, manifest_path, redis_client, write_snapshot
from tasks.register import GateDecision, Registration, promote_if_better, register_model
from tasks.train import SplitFrames, TrainedModel, dask_client_with_workers, split_frames
from tasks.validate import ValidatedBatch, validate_batch


@functools.cache
def code_version() -> str:
    """Hash of the code the stages run (tasks/, the lake, the built rust_ext library when it is the
    kernels' backend): changing it invalidates cached stages.

    The CLI, the flow and the settings loader are left out: they do not change what a stage computes
    (the settings themselves are stage inputs)."""
    from tasks import kernels

    digest = hashlib.sha256()
    root = Path(__file__).resolve().parent.parent
    for path in [
        *sorted((root / "tasks").rglob("*.py")),
        root / "fusion" / "core" / "lake.py",
        *kernels.native_library(),
    ]:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def stage_cache_key(context: Any, inputs: dict[str, Any]) -> str | None:
    """Inputs hashed one by one, plus the code version.

    Hashing all inputs in one pickle (Prefect's INPUTS) makes the key depend on
    which objects happen to share a list in memory, so a result loaded from the
    cache hashes differently from the same result fresh from its task.
    """
    digest = hashlib.sha256(code_version().encode())
    for name in sorted(inputs):
        value_hash = hash_objects(inputs[name])
        if value_hash is None:
            return None  # unhashable input: do not cache rather than collide
        digest.update(f"{name}={value_hash};".encode())
    return digest.hexdigest()


STAGE_CACHE = CacheKeyFnPolicy(cache_key_fn=stage_cache_key)


def retry_unless_bad_data(task: Any, task_run: Any, state: Any) -> bool:
    """Retry I/O failures; never retry bad data or bad config (it would fail the same way)."""
    try:
        state.result()
    except FusionError as exc:
        return exc.retryable
    except Exception:
        return True
    return False


@task(name="fingerprint-sources", retry_condition_fn=retry_unless_bad_data)
def fingerprint_sources(source: SourceConfig) -> dict[str, str]:
    return {table: source_fingerprint(cfg.uri) for table, cfg in source.tables.items()}


@task(name="ingest", cache_policy=STAGE_CACHE, persist_result=True, retry_condition_fn=retry_unless_bad_data)
def ingest(dataset: str, source: SourceConfig, fingerprints: dict[str, str], lake: Lake) -> IngestedBatch:
    # `fingerprints` is not read here: it is part of the cache key, so changed sources re-ingest.
    return ingest_tables(dataset, source, lake)


@task(name="validate", cache_policy=STAGE_CACHE, persist_result=True, retry_condition_fn=retry_unless_bad_data)
def validate(
    batch: IngestedBatch,
    suites: dict[str, dict[str, Any]],
    config: ValidationConfig,
    primary: str,
    lake: Lake,
    gx_root: str,
) -> ValidatedBatch:
    return validate_batch(batch, suites, config, primary, lake, Path(gx_root))


@task(name="features", cache_policy=STAGE_CACHE, persist_result=True, retry_condition_fn=retry_unless_bad_data)
def build_feature_table(batch: ValidatedBatch, dataset: DatasetConfig, lake: Lake) -> feature_code.FeatureSet:
    tables = {name: lake.read_parquet(path) for name, path in batch.tables.items()}
    spec = dataset.features
    frame = feature_code.build_features(tables, dataset.source.primary, spec, dataset.prediction_time, dataset.target)
    names = feature_code.feature_names(spec)
    path = lake.path(
        "features", dataset.name, batch.batch_id, f"features-v{spec.version}-{dataset.fingerprint()}.parquet"
    )
    lake.write_parquet(frame, path)
    return feature_code.FeatureSet(
        dataset=dataset.name,
        batch_id=batch.batch_id,
        path=path,
        rows=frame.height,
        feature_columns=names,
        categorical_columns=feature_code.categorical_names(frame, names),
        target=dataset.target.name,
        spec_version=spec.version,
    )


def load_split(
    features: feature_code.FeatureSet, dataset: DatasetConfig, lake: Lake, keep: tuple[str, ...]
) -> SplitFrames:
    """The parts of the feature table a stage needs (the others are left empty)."""
    return split_frames(lake.read_parquet(features.path), dataset, keep)


@task(name="train", cache_policy=STAGE_CACHE, persist_result=True, retry_condition_fn=retry_unless_bad_data)
def train(features: feature_code.FeatureSet, dataset: DatasetConfig, lake: Lake, threads: int) -> TrainedModel:
    client, workers = dask_client_with_workers()
    if client is None or (dataset.model.family == "lightgbm" and workers == 1):
        return train_family(lake, features, dataset, threads, client, workers)
    from distributed import worker_client

    # torch and lightgbm.dask are Dask work of their own (torch placed by its resources, lightgbm.dask
    # on every worker): this task leaves its worker's thread pool while it waits, so that worker trains too
    with worker_client() as seceded:
        return train_family(lake, features, dataset, threads, seceded, workers)


@task(name="evaluate", cache_policy=STAGE_CACHE, persist_result=True)
def evaluate(
    trained: TrainedModel, features: feature_code.FeatureSet, dataset: DatasetConfig, lake: Lake
) -> Evaluation:
    parts = load_split(features, dataset, lake, keep=("train", "test"))  # train: the baseline's
    model_hash = trained.model.digest()[:12]
    report_dir = lake.path("reports", dataset.name, features.batch_id, model_hash)
    model = dataset.model
    args = (features.categorical_columns, features.target, model.baseline, lake, report_dir, model.baseline_rows)
    return evaluate_model(trained, parts, *args)


@task(name="register", retry_condition_fn=retry_unless_bad_data)
def register(
    trained: TrainedModel,
    evaluation: Evaluation,
    features: feature_code.FeatureSet,
    dataset: DatasetConfig,
    lake: Lake,
    extra_artifacts: dict[str, str],
    tracking_uri: str,
) -> Registration:
    example = lake.read_parquet(features.path, n_rows=5)
    return register_model(trained, evaluation, dataset, features.batch_id, example, lake, extra_artifacts, tracking_uri)


@task(name="promote", retry_condition_fn=retry_unless_bad_data)
def promote(
    registration: Registration,
    evaluation: Evaluation,
    features: feature_code.FeatureSet,
    dataset: DatasetConfig,
    lake: Lake,
    tracking_uri: str,
) -> GateDecision:
    test = load_split(features, dataset, lake, keep=("test",)).test
    return promote_if_better(registration, evaluation, test, features.target, dataset.gate, tracking_uri)


@task(name="online-features", cache_policy=NO_CACHE, retry_condition_fn=retry_unless_bad_data)
def materialize_online(
    batch: ValidatedBatch, dataset: DatasetConfig, lake: Lake, redis_url: SecretStr | None
) -> Materialized:
    """Each group's latest stateful features for serving: a lake snapshot, and Redis when configured."""
    tables = {name: lake.read_parquet(path) for name, path in batch.tables.items()}
    spec = dataset.features
    state = online_state(tables, dataset.source.primary, spec, dataset.prediction_time)
    manifest = write_snapshot(lake, dataset.name, spec, batch.batch_id, state)
    keys = 0
    if redis_url:
        client = redis_client(redis_url.get_secret_value())
        try:
            keys = load_into_redis(client, spec, manifest, state.frames)
        finally:
            client.close()
    return Materialized(
        dataset=dataset.name,
        spec_version=spec.version,
        batch_id=batch.batch_id,
        as_of=manifest["as_of"],
        groups=manifest["groups"],
        manifest_uri=manifest_path(lake, dataset.name, spec.version),
        redis_keys=keys,
    )


@task(name="publish-event", cache_policy=NO_CACHE)
def publish(sink: EventSink, event: CloudEvent) -> str:
    sink.bus().publish(event)
    return event.id


# The tasks that do I/O: they retry as `pipeline.retries` / `retry_delay_s` say (tasks/pipeline_run.py).
# A set of names, not a Prefect tag: Prefect takes a tag concurrency slot (API calls that write to the
# server's database) around every run of a tagged task, which stalled the run up to 2 s per stage on the
# embedded API's SQLite.
IO_TASKS = frozenset(
    t.name for t in (fingerprint_sources, ingest, validate, register, promote, materialize_online, publish)
)
