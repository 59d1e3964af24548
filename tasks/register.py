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

import polars as pl

from fusion.core.lake import Lake
from fusion.core.logs import printed_to_log
from fusion.core.settings import DatasetConfig, GateConfig
from tasks.evaluate import Evaluation
from tasks.registry_store import local_artifact_root, seed_local_registry
from tasks.train import TrainedModel, in_chunks

CHALLENGER = "challenger"
CHAMPION = "champion"
PIP_REQUIREMENTS = ["mlflow", "lightgbm", "polars", "pandas", "numpy", "pyarrow"]
FAMILY_REQUIREMENTS = {"torch": ["torch", "scipy"]}


def requirements(family: str) -> list[str]:
    """What the registered pyfunc needs to load and predict (LightGBM's vocabulary code is shared)."""
    return PIP_REQUIREMENTS + FAMILY_REQUIREMENTS.get(family, [])


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
    blob = f"{batch_id}|{config_fingerprint}|{trained.model.digest()}".encode()
    return hashlib.sha256(blob).hexdigest()[:24]


def _client(tracking_uri: str) -> Any:
    from mlflow import MlflowClient

    seed_local_registry(tracking_uri)  # a fresh home's registry starts migrated
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def find_registered_version(client: Any, name: str, fingerprint: str) -> Registration | None:
    """The version already registered from the same batch, config and model, if there is one."""
    # MLflow 3's registries (sqlite, file, a tracking server over either) answer a model that does not exist yet
    # with an empty list, so no error means "nothing registered": any error (registry down, database locked, bad
    # filter) must reach the task's retry, not pass for a missing model and register a duplicate.
    found = client.search_model_versions(f"name = '{name}' and tags.`fusion.fingerprint` = '{fingerprint}'")
    if not found:
        return None
    return Registration(name, str(found[0].version), found[0].run_id, reused=True)


def ensure_experiment(client: Any, tracking_uri: str, experiment: str) -> None:
    """Make `experiment` the active one; a local registry gets it created under its own artifact root."""
    import mlflow

    root = local_artifact_root(tracking_uri)
    if root is not None and client.get_experiment_by_name(experiment) is None:
        client.create_experiment(experiment, artifact_location=(root / experiment).as_uri())
    mlflow.set_experiment(experiment)


def run_params(trained: TrainedModel, evaluation: Evaluation, dataset: DatasetConfig, batch_id: str) -> dict[str, Any]:
    """The MLflow params of a training run."""
    prefix = {"lightgbm": "lgbm", "torch": "torch"}.get(trained.family, trained.family)
    return {
        **{f"{prefix}.{k}": v for k, v in trained.params.items()},
        "family": trained.family,
        "device": trained.device,
        "best_iteration": trained.best_iteration,
        "engine": trained.engine,
        "batch_id": batch_id,
        "feature_spec_version": dataset.features.version,
        "n_features": len(trained.model.features),
        "baseline": evaluation.baseline_kind,
        **{f"rows.{k}": v for k, v in trained.split_sizes.items()},
        **{f"split.{k}": v for k, v in trained.split.items()},
    }


def log_run_record(
    trained: TrainedModel,
    evaluation: Evaluation,
    dataset: DatasetConfig,
    batch_id: str,
    fingerprint: str,
    lake: Lake,
    extra_artifacts: dict[str, str],
) -> None:
    """Log params, metrics, tags, evaluation artifacts and the dataset config to the active run."""
    import mlflow

    mlflow.log_params(run_params(trained, evaluation, dataset, batch_id))
    candidates = {f"valid_auc.{family}": auc for family, auc in trained.candidates.items()}
    mlflow.log_metrics({**evaluation.metrics(), "fit_seconds": trained.fit_seconds, **candidates})
    mlflow.set_tags(
        {
            "fusion.dataset": dataset.name,
            "fusion.batch_id": batch_id,
            "fusion.fingerprint": fingerprint,
            "fusion.family": trained.family,
            "fusion.device": trained.device,
            **({"fusion.device_reason": trained.device_reason} if trained.device_reason else {}),
            **({"fusion.worker": trained.worker} if trained.worker else {}),
        }
    )
    with tempfile.TemporaryDirectory() as tmp:
        for label, path in {**evaluation.artifacts, **extra_artifacts}.items():
            local = Path(tmp) / label
            local.write_bytes(lake.read_bytes(path))
            mlflow.log_artifact(str(local), artifact_path="evaluation")
        (Path(tmp) / "dataset_config.json").write_text(json.dumps(dataset.model_dump(mode="json"), indent=2))
        mlflow.log_artifact(str(Path(tmp) / "dataset_config.json"), artifact_path="config")


def log_registered_pyfunc(trained: TrainedModel, signature: Any, example: Any, name: str) -> str:
    """Log the model as a pyfunc in the active run and register it under `name`; returns the new version."""
    import mlflow

    info = mlflow.pyfunc.log_model(
        name="model",
        python_model=trained.model,
        signature=signature,
        input_example=example,
        # Explicit requirements: inferring them costs ~14 s (STACK_NOTES).
        pip_requirements=[f"{p}=={installed_version(p)}" for p in requirements(trained.family)],
        registered_model_name=name,
    )
    return str(info.registered_model_version)


def mark_challenger(client: Any, name: str, version: str, tags: dict[str, str]) -> None:
    """Tag the version (the fingerprint tag is what makes registration idempotent) and point `challenger` at it."""
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    client.set_registered_model_alias(name, CHALLENGER, version)


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
    """Register the model as the challenger, or return the identical version registered before."""
    import mlflow

    client = _client(tracking_uri)
    name = dataset.model.registered_name
    fingerprint = model_fingerprint(trained, batch_id, dataset.fingerprint())
    existing = find_registered_version(client, name, fingerprint)
    if existing is not None:
        return existing

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    ensure_experiment(client, tracking_uri, f"fusion-{dataset.name}")
    signature, example = model_signature(trained, input_example)
    # outermost: MLflow prints "Created version ..." and, leaving the run, its link
    with printed_to_log("mlflow"), mlflow.start_run(run_name=f"{dataset.name}-{batch_id}") as run:
        log_run_record(trained, evaluation, dataset, batch_id, fingerprint, lake, extra_artifacts)
        version = log_registered_pyfunc(trained, signature, example, name)
    tags = {
        "fusion.fingerprint": fingerprint,
        "fusion.batch_id": batch_id,
        "fusion.dataset": dataset.name,
        "fusion.test_auc": f"{evaluation.test_auc:.6f}",
    }
    mark_challenger(client, name, version, tags)
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


def load_registered(tracking_uri: str, name: str, version: str) -> Any:
    """A registered version's pyfunc (`version`: a number, or an alias such as `champion`), resolved in
    the registry at `tracking_uri` by a client of its own: `models:/` URIs would resolve against
    MLflow's process-wide registry URI, which the last caller anywhere in the process set."""
    import mlflow.pyfunc

    client = _client(tracking_uri)
    number = version if version.isdigit() else str(client.get_model_version_by_alias(name, version).version)
    return mlflow.pyfunc.load_model(client.get_model_version_download_uri(name, number))


def score_on(model: Any, test: pl.DataFrame, target: str) -> float:
    """AUC of a registered model's pyfunc (`load_registered`) on our test split, by its own predict."""
    from sklearn.metrics import roc_auc_score

    columns = [c.name for c in model.metadata.get_input_schema().inputs]
    predicted = in_chunks(lambda chunk: model.predict(chunk.to_pandas()), test.select(columns))
    return float(roc_auc_score(test.get_column(target).to_numpy(), predicted))


def decide(
    challenger_auc: float, champion_auc: float | None, gate: GateConfig, baseline_auc: float | None = None
) -> tuple[bool, str]:
    """The promotion rule alone. With `require_beat_baseline` (default) the challenger must first beat the
    baseline on the test split (strictly), champion or not; then it is promoted when there is no champion
    or it beats the champion by min_delta. The reason names the comparison that decided."""
    if gate.require_beat_baseline:
        if baseline_auc is None:
            raise ValueError("gate.require_beat_baseline needs the baseline's test AUC")
        if not challenger_auc > baseline_auc:
            return (
                False,
                f"{gate.metric} {challenger_auc:.4f} does not beat the baseline's {baseline_auc:.4f}"
                f" ({challenger_auc - baseline_auc:+.4f})",
            )
    if champion_auc is None:
        if gate.require_beat_baseline:
            return True, f"no champion yet; {gate.metric} {challenger_auc:.4f} beats the baseline's {baseline_auc:.4f}"
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
                champion_auc = score_on(load_registered(tracking_uri, name, str(champion.version)), test, target)
            except Exception as exc:  # champion built on other features: fall back to its logged score
                logged = champion.tags.get("fusion.test_auc")
                if logged is None:
                    raise RuntimeError(f"cannot score champion v{champion.version} on this test split: {exc}") from exc
                champion_auc = float(logged)
        promoted, reason = decide(evaluation.test_auc, champion_auc, gate, evaluation.baseline_auc)
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
