"""A local MLflow registry (SQLite in FUSION_HOME) that starts migrated.

MLflow creates a missing SQLite database by running every Alembic migration it ships, ~2.4 s of the
first registration in each fresh home (docs/BENCHMARKS.md, "Cold start: where the time goes"). `make
setup` migrates one database per installed MLflow (`python -m fusion.runtime mlflow-template`); a
fresh home's registry starts as a copy of it. A database that exists, a tracking server, or no template
(MLflow then migrates as usual) are left alone.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import sys
import tempfile
from importlib.metadata import version as installed_version
from pathlib import Path

SQLITE = "sqlite:///"


def local_artifact_root(tracking_uri: str) -> Path | None:
    """Where a local (sqlite) registry keeps its artifacts: `mlartifacts/` beside the database, so a
    FUSION_HOME holds its models. (MLflow's own default is `./mlruns` in whatever directory the
    process runs from.) None for a tracking server, which decides for itself."""
    if not tracking_uri.startswith(SQLITE):
        return None
    return Path(tracking_uri.removeprefix(SQLITE)).resolve().parent / "mlartifacts"


def registry_template_path() -> Path:
    """Where the migrated database for the installed MLflow lives (its migrations are MLflow's own)."""
    return Path(sys.prefix) / "share" / "fusion" / f"mlflow-{installed_version('mlflow')}.db"


def seed_local_registry(tracking_uri: str) -> bool:
    """Copy the template into a local registry that has no database yet; True when it did.

    The template's `Default` experiment (id 0) is pointed at this registry's own artifact root, where
    MLflow would put it under the creating process's working directory."""
    root = local_artifact_root(tracking_uri)
    if root is None:
        return False
    database = Path(tracking_uri.removeprefix(SQLITE))
    if database.exists():
        return False
    template = registry_template_path()
    if not template.is_file():
        return False
    database.parent.mkdir(parents=True, exist_ok=True)
    partial = database.with_name(f".{database.name}.{os.getpid()}")
    shutil.copyfile(template, partial)
    try:
        with sqlite3.connect(partial) as db:
            db.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0", ((root / "0").as_uri(),))
        db.close()
        os.link(partial, database)  # fails if another process created the database meanwhile: keep theirs
    except FileExistsError:
        return False
    finally:
        partial.unlink()
    return True


def make_registry_template() -> Path:
    """Migrate a scratch database through MLflow's own store and keep a copy as the template (what `make
    setup` runs; idempotent)."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    target = registry_template_path()
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fusion-mlflow-template-") as scratch:
        database = Path(scratch) / "mlflow.db"
        store = SqlAlchemyStore(f"{SQLITE}{database}", (Path(scratch) / "mlartifacts").as_uri())
        store.engine.dispose()
        partial = target.with_name(f".{target.name}.{os.getpid()}")
        # the backup API folds a write-ahead log, if any, into one self-contained file
        with sqlite3.connect(database) as source, sqlite3.connect(partial) as copy:
            source.backup(copy)
        source.close()
        copy.close()
        os.replace(partial, target)
    return target
