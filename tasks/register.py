"""Register: log the run to MLflow, add a model version with alias `challenger`, and apply the promotion gate.

Registration is idempotent: a version already made from the same batch,
config and model (tag `fusion.fingerprint`) is reused instead of duplicated.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass, field
from importlib.metadata import version as installed_version
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from fusion.lake import Lake
from fusion.settings import DatasetConfig, GateConfig
from tasks.evaluate import Evaluation
from tasks.train import TrainedModel

CHALLENGER = "challenger"
CHAMPION = "champion"
PIP_REQUIREMENTS = ["mlflow", "lightgbm", "polars", "pandas", "numpy", "pyarrow"]


@dataclass(frozen=True)
class Registration:
    model_name: str
    version: str
    run_id: str
    reused: bool  # an identical version existed already


@dataclass(frozen=True)
class GateDecision:
    promoted: bool
    reason: str
    champion_version: str | None  # the champion before the decision
    champion_auc: float | None
    aliases: list[str] = field(default_factory=list)  # of the new version, after the decision


def model_fingerprint(trained: TrainedModel, batch_id: str, config_fingerprint: str) -> str:
    blob = f"{batch_id}|{config_fingerprint}|{trained.model.booster_text}".encode()
    return hashlib.sha256(blob).hexdigest()[:24]


def _client(tracking_uri: str) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def local_artifact_root(tracking_uri: str) -> Path | None:
    """Where a local (sqlite) registry keeps its artifacts: `mlartifacts/` beside the database, so a
    FUSION_HOME holds its models. (MLflow's own default is `./mlruns` in whatever directory the
    process runs from.) None for a tracking server, which decides for itself."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    return Path(tracking_uri.removeprefix("sqlite:///")).resolve().parent / "mlartifacts"


def register_model(
    trained: TrainedModel,
    evaluation: Evaluation,
    dataset: DatasetConfig,
    batch_id: str,
    input_example: pl.DataFrame,
    lake: Lake,
    extra_artifacts: dict[str, str],
    tracking_uri: str,
) -> Registration:
    import mlflow

    client = _client(tracking_uri)
    name = dataset.model.registered_name
    fingerprint = model_fingerprint(trained, batch_id, dataset.fingerprint())
    try:
        existing = client.search_model_versions(f"name = '{name}' and tags.`fusion.fingerprint` = '{fingerprint}'")
    except Exception:  # registered model does not exist yet
        existing = []
    if existing:
        found = existing[0]
        return Registration(name, str(found.version), found.run_id, reused=True)

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    experiment = f"fusion-{dataset.name}"
    root = local_artifact_root(tracking_uri)
    if root is not None and client.get_experiment_by_name(experiment) is None:
        client.create_experiment(experiment, artifact_location=(root / experiment).as_uri())
    mlflow.set_experiment(experiment)
    signature, example = model_signature(trained, input_example)
    with mlflow.start_run(run_name=f"{dataset.name}-{batch_id}") as run:
        mlflow.log_params(
            {
                **{f"lgbm.{k}": v for k, v in trained.params.items()},
                "best_iteration": trained.best_iteration,
                "engine": trained.engine,
                "batch_id": batch_id,
                "feature_spec_version": dataset.features.version,
                "n_features": len(trained.model.features),
                "baseline": evaluation.baseline_kind,
                **{f"rows.{k}": v for k, v in trained.split_sizes.items()},
            }
        )
        mlflow.log_metrics({**evaluation.metrics(), "fit_seconds": trained.fit_seconds})
        mlflow.set_tags(
            {"fusion.dataset": dataset.name, "fusion.batch_id": batch_id, "fusion.fingerprint": fingerprint}
        )
        with tempfile.TemporaryDirectory() as tmp:
            for label, path in {**evaluation.artifacts, **extra_artifacts}.items():
                local = Path(tmp) / label
                local.write_bytes(lake.read_bytes(path))
                mlflow.log_artifact(str(local), artifact_path="evaluation")
            (Path(tmp) / "dataset_config.json").write_text(json.dumps(dataset.model_dump(mode="json"), indent=2))
            mlflow.log_artifact(str(Path(tmp) / "dataset_config.json"), artifact_path="config")
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=trained.model,
            signature=signature,
            input_example=example,
            # Explicit requirements: inferring them costs ~14 s (STACK_NOTES).
            pip_requirements=[f"{p}=={installed_version(p)}" for p in PIP_REQUIREMENTS],
            registered_model_name=name,
        )
    version = str(info.registered_model_version)
    for key, value in {
        "fusion.fingerprint": fingerprint,
        "fusion.batch_id": batch_id,
        "fusion.dataset": dataset.name,
        "fusion.test_auc": f"{evaluation.test_auc:.6f}",
    }.items():
        client.set_model_version_tag(name, version, key, value)
    client.set_registered_model_alias(name, CHALLENGER, version)
    return Registration(name, version, run.info.run_id, reused=False)


def model_signature(trained: TrainedModel, rows: pl.DataFrame) -> tuple[Any, Any]:
    """Signature from the feature types, not inferred from a few rows: any feature may be
    missing at prediction time, and an integer feature with a gap arrives as a float."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    model = trained.model
    categorical = set(model.vocab.categories)
    inputs = Schema([ColSpec("string" if c in categorical else "double", c, required=False) for c in model.features])
    example = rows.select(
        [pl.col(c).cast(pl.String if c in categorical else pl.Float64) for c in model.features]
    ).to_pandas()
    return ModelSignature(inputs=inputs, outputs=Schema([ColSpec("double", "probability")])), example


def champion_version(client: Any, name: str) -> Any | None:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


def score_on(model_uri: str, test: pl.DataFrame, target: str) -> float:
    """AUC of a registered model on our test split, using its own pyfunc predict."""
    import mlflow.pyfunc
    from sklearn.metrics import roc_auc_score

    model = mlflow.pyfunc.load_model(model_uri)
    columns = [c.name for c in model.metadata.get_input_schema().inputs]
    predicted = np.asarray(model.predict(test.select(columns).to_pandas()))
    return float(roc_auc_score(test.get_column(target).to_numpy(), predicted))


def decide(challenger_auc: float, champion_auc: float | None, gate: GateConfig) -> tuple[bool, str]:
    """The promotion rule alone: promote when there is no champion or the challenger beats it by min_delta."""
    if champion_auc is None:
        return True, "no champion yet"
    margin = challenger_auc - champion_auc
    if margin >= gate.min_delta:
        return (
            True,
            f"{gate.metric} {challenger_auc:.4f} beats champion {champion_auc:.4f}"
            f" by {margin:+.4f} >= {gate.min_delta}",
        )
    return (
        False,
        f"{gate.metric} {challenger_auc:.4f} vs champion {champion_auc:.4f}:"
        f" {margin:+.4f} < min_delta {gate.min_delta}",
    )


def promote_if_better(
    registration: Registration,
    evaluation: Evaluation,
    test: pl.DataFrame,
    target: str,
    gate: GateConfig,
    tracking_uri: str,
) -> GateDecision:
    """Gate: compare with the current champion re-scored on the same test split; move `champion` if better."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    client = _client(tracking_uri)
    name, version = registration.model_name, registration.version
    champion = champion_version(client, name)
    if champion is not None and str(champion.version) == version:
        promoted, reason, champion_auc = False, "already the champion", evaluation.test_auc
    else:
        champion_auc = None
        if champion is not None:
            try:
                champion_auc = score_on(f"models:/{name}/{champion.version}", test, target)
            except Exception as exc:  # champion built on other features: fall back to its logged score
                logged = champion.tags.get("fusion.test_auc")
                if logged is None:
                    raise RuntimeError(f"cannot score champion v{champion.version} on this test split: {exc}") from exc
                champion_auc = float(logged)
        promoted, reason = decide(evaluation.test_auc, champion_auc, gate)
        if promoted:
            client.set_registered_model_alias(name, CHAMPION, version)
        client.set_model_version_tag(name, version, "fusion.gate.decision", "promoted" if promoted else "rejected")
        client.set_model_version_tag(name, version, "fusion.gate.reason", reason)
        client.set_tag(registration.run_id, "fusion.gate.decision", "promoted" if promoted else "rejected")
        client.set_tag(registration.run_id, "fusion.gate.reason", reason)
    aliases = sorted(client.get_model_version(name, version).aliases)
    return GateDecision(
        promoted=promoted,
        reason=reason,
        champion_version=str(champion.version) if champion is not None else None,
        champion_auc=champion_auc,
        aliases=aliases,
    )
