"""The stages' slow imports that `fusion run` makes while the embedded API boots (tasks/deferred.py,
fusion.runtime.import_while)."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from fusion.core.settings import Settings, load_settings
from fusion.runtime import import_while, stages_in_this_process
from tasks.deferred import DATABASE_SCHEMES, deferred_imports


def _flights(monkeypatch: pytest.MonkeyPatch, **env: str) -> Settings:
    for key in ("FUSION_MLFLOW_TRACKING_URI", "FUSION_REDIS_URL", "FUSION_DASK_ADDRESS"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return load_settings("configs/flights.yaml")


def test_the_flights_run_imports_the_libraries_of_its_stages_in_stage_order(monkeypatch: pytest.MonkeyPatch) -> None:
    assert deferred_imports(_flights(monkeypatch)) == [
        "great_expectations",
        "matplotlib.figure",
        "mlflow.store.tracking.sqlalchemy_store",
        "mlflow.store.model_registry.sqlalchemy_store",
    ]


def test_only_the_libraries_this_run_will_use_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    remote = deferred_imports(_flights(monkeypatch, FUSION_MLFLOW_TRACKING_URI="http://mlflow.fusion:5000"))
    assert not [m for m in remote if m.startswith("mlflow.store")]  # a tracking server: MLflow's REST store
    with_redis = deferred_imports(_flights(monkeypatch, FUSION_REDIS_URL="redis://localhost:6379/0"))
    assert with_redis[-1] == "redis"
    torch = deferred_imports(_flights(monkeypatch, FUSION_DATASET__MODEL__FAMILY="torch"))
    assert torch.index("torch") == 1  # after validation's, before evaluate's
    settings = _flights(monkeypatch)
    unvalidated = settings.model_copy(
        update={
            "dataset": settings.dataset.model_copy(
                update={"validation": settings.dataset.validation.model_copy(update={"suites": {}})}
            )
        }
    )
    assert "great_expectations" not in deferred_imports(unvalidated)
    postgres = _flights(monkeypatch, FUSION_MLFLOW_TRACKING_URI="postgresql+psycopg2://mlflow@db/mlflow")
    assert "mlflow.store.tracking.sqlalchemy_store" in deferred_imports(postgres)
    assert "postgresql" in DATABASE_SCHEMES


def test_every_named_module_exists_in_the_installed_libraries(monkeypatch: pytest.MonkeyPatch) -> None:
    # a library that moves a module would turn its early import into a silent no-op
    settings = _flights(monkeypatch, FUSION_REDIS_URL="redis://localhost:6379/0", FUSION_DATASET__MODEL__FAMILY="best")
    for name in deferred_imports(settings):
        assert importlib.util.find_spec(name) is not None, name


def test_only_a_run_whose_stages_share_its_process_imports_for_them(monkeypatch: pytest.MonkeyPatch) -> None:
    assert stages_in_this_process(_flights(monkeypatch, FUSION_PIPELINE__DASK__PROCESSES="false"))
    assert not stages_in_this_process(_flights(monkeypatch, FUSION_PIPELINE__DASK__PROCESSES="true"))
    assert not stages_in_this_process(_flights(monkeypatch, FUSION_DASK_ADDRESS="tcp://scheduler.fusion:8786"))


@pytest.fixture
def modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    names = ["fusion_probe_one", "fusion_probe_broken", "fusion_probe_two", "fusion_probe_three"]
    for name in names:
        body = "raise ImportError('a missing dependency')" if "broken" in name else "VALUE = 1"
        (tmp_path / f"{name}.py").write_text(body + "\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield names
    for name in names:
        sys.modules.pop(name, None)


def test_modules_are_imported_until_the_wait_ends_and_a_broken_one_is_left_to_its_stage(modules: list[str]) -> None:
    answers = iter([True, True, True, False])
    imported = import_while(lambda: next(answers), modules)
    assert imported == ["fusion_probe_one", "fusion_probe_two"]
    assert "fusion_probe_one" in sys.modules and "fusion_probe_two" in sys.modules
    assert "fusion_probe_broken" not in sys.modules  # its stage imports it again and raises its own error
    assert "fusion_probe_three" not in sys.modules  # the wait had ended


def test_nothing_is_imported_when_there_is_no_wait(modules: list[str]) -> None:
    assert import_while(lambda: False, modules) == []
    assert not set(modules) & set(sys.modules)
