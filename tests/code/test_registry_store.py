"""A fresh home's local MLflow registry starts as a copy of a migrated template (tasks/registry_store.py)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

import tasks.registry_store as registry_store
from tasks.registry_store import make_registry_template, seed_local_registry


@pytest.fixture
def template(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A template made here, not the one `make setup` installed."""
    target = tmp_path / "share" / "mlflow-template.db"
    monkeypatch.setattr(registry_store, "registry_template_path", lambda: target)
    assert make_registry_template() == target and target.is_file()
    return target


def schema(database: Path) -> list[tuple[str, str, list[str]]]:
    """Every table, index and trigger, and the migration it is at. A statement's lines are sorted: MLflow's own
    migrations write a table's constraints in an order that differs from one fresh database to the next."""
    with sqlite3.connect(database) as db:
        rows = [
            (kind, name, sorted(line.strip().rstrip(",") for line in (sql or "").splitlines()))
            for kind, name, sql in db.execute("SELECT type, name, sql FROM sqlite_master ORDER BY type, name")
        ]
        rows += [("alembic", version, []) for (version,) in db.execute("SELECT version_num FROM alembic_version")]
    db.close()
    return rows


def test_a_seeded_registry_is_the_one_mlflow_makes_and_keeps_its_artifacts_in_the_home(
    tmp_path: Path, template: Path
) -> None:
    home = tmp_path / "home"
    uri = f"sqlite:///{home / 'mlflow.db'}"
    assert seed_local_registry(uri)

    made_by_mlflow = tmp_path / "mlflow-own" / "mlflow.db"
    made_by_mlflow.parent.mkdir()
    SqlAlchemyStore(f"sqlite:///{made_by_mlflow}", (tmp_path / "mlflow-own" / "artifacts").as_uri()).engine.dispose()
    assert schema(home / "mlflow.db") == schema(made_by_mlflow)

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    # MLflow puts the Default experiment under the creating process's working directory; a seeded home, in itself
    assert client.get_experiment("0").artifact_location == (home / "mlartifacts" / "0").as_uri()
    experiment = client.create_experiment("seeded")
    run = client.create_run(experiment)
    client.log_param(run.info.run_id, "rows", "10")
    client.create_registered_model("seeded_model")
    version = client.create_model_version("seeded_model", source=(tmp_path / "model").as_uri(), run_id=run.info.run_id)
    assert str(version.version) == "1"
    assert client.get_run(run.info.run_id).data.params == {"rows": "10"}


def test_seeding_leaves_existing_registries_servers_and_missing_templates_alone(
    tmp_path: Path, template: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    existing = tmp_path / "existing" / "mlflow.db"
    existing.parent.mkdir()
    existing.write_bytes(b"a database of the user's")
    assert not seed_local_registry(f"sqlite:///{existing}")
    assert existing.read_bytes() == b"a database of the user's"

    assert not seed_local_registry("http://127.0.0.1:5000")

    monkeypatch.setattr(registry_store, "registry_template_path", lambda: tmp_path / "no-template.db")
    fresh = tmp_path / "fresh" / "mlflow.db"
    assert not seed_local_registry(f"sqlite:///{fresh}")
    assert not fresh.exists()  # MLflow will migrate it itself
    assert list(tmp_path.glob("**/.mlflow.db.*")) == []  # no partial copy left behind
