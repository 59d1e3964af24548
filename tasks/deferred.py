"""The slow imports the stages make only when they run, named for a process with time to make them early.

Each stage imports its heaviest libraries inside the stage (Great Expectations in validate, matplotlib
in evaluate, MLflow's database store in register, torch in a torch family's train), so that a cached or
skipped stage never pays them; the run's process then pays each on a stage's path. `fusion run` makes
them while it waits for the embedded Prefect API to boot (`fusion.runtime.import_while`), when the
stages run in its own process. Figures: docs/BENCHMARKS.md, "Cold start: where the time goes". Imports
nothing itself beyond the settings.
"""

from __future__ import annotations

from urllib.parse import urlparse

from fusion.core.settings import Settings

VALIDATE = ("great_expectations",)  # tasks/validate.py
TORCH = ("torch",)  # tasks/families.py, for the torch and best families
EVALUATE = ("matplotlib.figure",)  # tasks/evaluate.py's plots
# MLflow's own import when its tracking URI is a database (the default: SQLite in the home)
REGISTRY_DATABASE = ("mlflow.store.tracking.sqlalchemy_store", "mlflow.store.model_registry.sqlalchemy_store")
REDIS = ("redis",)  # tasks/online_store.py, when the online store is configured
DATABASE_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")


def deferred_imports(settings: Settings) -> list[str]:
    """The modules this run's stages will import when they run, in the order the stages run."""
    dataset = settings.dataset
    modules: list[str] = []
    if dataset.validation.suites:
        modules += VALIDATE
    if dataset.model.family != "lightgbm":
        modules += TORCH
    modules += EVALUATE
    if urlparse(settings.resolved_mlflow_uri).scheme.split("+")[0] in DATABASE_SCHEMES:
        modules += REGISTRY_DATABASE
    if settings.redis_url is not None:
        modules += REDIS
    return modules
