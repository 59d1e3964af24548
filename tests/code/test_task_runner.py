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

    from flows.training_pipeline import stages
    from tasks.local_cluster import STAGE_CODE

    assert stages.__name__ == STAGE_CODE  # the module the flow's stages come from

    monkeypatch.delenv("FUSION_DASK_ADDRESS", raising=False)
    monkeypatch.setenv("FUSION_PIPELINE__DASK__N_WORKERS", "2")
    monkeypatch.setenv("FUSION_PIPELINE__DASK__PROCESSES", "true")
    with dask.config.set({"distributed.worker.preload": ["fusion.core.logs"]}):
        runner = deployment_task_runner()
    assert runner.cluster_kwargs["preload"] == ["fusion.core.logs", STAGE_CODE]
    monkeypatch.setenv("FUSION_PIPELINE__DASK__PROCESSES", "false")
    assert "preload" not in deployment_task_runner().cluster_kwargs


def test_fusion_run_starts_early_only_a_local_cluster_of_worker_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    """`fusion run` starts the cluster beside its imports only where the flow would start worker processes
    itself; threads share the run's process, and an address or Kubernetes cluster is not the run's."""
    from fusion.core.settings import load_settings
    from fusion.runtime import start_local_cluster

    monkeypatch.delenv("FUSION_DASK_ADDRESS", raising=False)
    monkeypatch.setenv("FUSION_PIPELINE__DASK__PROCESSES", "false")
    assert start_local_cluster(load_settings("configs/flights.yaml")) is None
    monkeypatch.setenv("FUSION_PIPELINE__DASK__PROCESSES", "true")
    monkeypatch.setenv("FUSION_DASK_ADDRESS", "tcp://scheduler.fusion:8786")
    assert start_local_cluster(load_settings("configs/flights.yaml")) is None
    monkeypatch.delenv("FUSION_DASK_ADDRESS")
    monkeypatch.setenv("FUSION_PIPELINE__DASK__CLUSTER", "kubernetes")
    assert start_local_cluster(load_settings("configs/flights.yaml")) is None


def test_the_local_cluster_arguments_import_no_model_library() -> None:
    """`fusion run` builds them in a thread beside its own imports: a model library imported there would
    take the GIL from the main thread for seconds before any worker starts."""
    import subprocess
    import sys

    heavy = "{'lightgbm', 'polars', 'sklearn', 'prefect'}"
    code = f"import sys, tasks.local_cluster; print(sorted({heavy} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
