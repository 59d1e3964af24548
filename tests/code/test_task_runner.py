"""Which Dask cluster a run uses: `fusion run` per config, deployment runs from the worker's environment."""

from __future__ import annotations

import pytest

from flows.training_pipeline import deployment_task_runner


def test_deployment_runs_use_the_cluster_named_in_the_workers_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FUSION_DASK_ADDRESS", "tcp://scheduler.fusion:8786")
    runner = deployment_task_runner()
    assert runner.address == "tcp://scheduler.fusion:8786"


def test_deployment_runs_size_their_local_cluster_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FUSION_DASK_ADDRESS", raising=False)
    monkeypatch.setenv("FUSION_PIPELINE__DASK__N_WORKERS", "3")
    monkeypatch.setenv("FUSION_PIPELINE__DASK__PROCESSES", "true")
    runner = deployment_task_runner()
    assert runner.address is None
    assert runner.cluster_kwargs["n_workers"] == 3 and runner.cluster_kwargs["processes"] is True
    assert runner.cluster_kwargs["threads_per_worker"] == 2  # the default where the environment is silent


def test_a_bad_value_in_the_environment_names_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FUSION_PIPELINE__DASK__N_WORKERS", "0")
    with pytest.raises(ValueError, match="n_workers"):
        deployment_task_runner()


def test_local_worker_processes_import_the_stage_code_as_they_start(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each worker process preloads the stages' module (keeping a preload configured for Dask, such as
    Fusion's JSON logs); worker threads share the run's process, which has imported it already."""
    import dask.config

    from flows.training_pipeline import STAGE_CODE

    monkeypatch.delenv("FUSION_DASK_ADDRESS", raising=False)
    monkeypatch.setenv("FUSION_PIPELINE__DASK__N_WORKERS", "2")
    monkeypatch.setenv("FUSION_PIPELINE__DASK__PROCESSES", "true")
    with dask.config.set({"distributed.worker.preload": ["fusion.core.logs"]}):
        runner = deployment_task_runner()
    assert runner.cluster_kwargs["preload"] == ["fusion.core.logs", STAGE_CODE]
    monkeypatch.setenv("FUSION_PIPELINE__DASK__PROCESSES", "false")
    assert "preload" not in deployment_task_runner().cluster_kwargs
