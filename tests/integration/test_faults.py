"""Faults: a Dask worker process killed (SIGKILL) while it trains; Dask runs the stage again on a live worker, the
run completes, and the registry holds exactly one version."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.integration


def test_a_worker_killed_while_training_costs_a_retry_not_the_run(
    monkeypatch: pytest.MonkeyPatch, fusion_home: Path, tmp_path: Path
) -> None:
    from distributed import Client, LocalCluster
    from mlflow import MlflowClient

    from flows.training_pipeline import run_pipeline
    from fusion.core.settings import load_settings
    from fusion.runtime import embedded_prefect_api_url
    from tests.datasets.card_transactions import write

    monkeypatch.setenv("PREFECT_API_URL", embedded_prefect_api_url())  # the workers reach this process's API
    paths = write(tmp_path / "data")
    monkeypatch.setenv("FUSION_DATASET__SOURCE__TABLES__TRANSACTIONS__URI", str(paths["transactions"]))
    monkeypatch.setenv("FUSION_DATASET__SOURCE__TABLES__ACCOUNTS__URI", str(paths["accounts"]))
    outcome: dict[str, Any] = {}
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):
        monkeypatch.setenv("FUSION_DASK_ADDRESS", cluster.scheduler_address)
        settings = load_settings(REPO / "configs" / "card_transactions.yaml")

        def run() -> None:
            try:
                outcome["summary"] = run_pipeline(settings)
            except BaseException as exc:  # reported below
                outcome["error"] = exc

        runner = threading.Thread(target=run)
        runner.start()
        killed: tuple[str, str] | None = None
        deadline = time.monotonic() + 600
        while runner.is_alive() and killed is None and time.monotonic() < deadline:
            for worker, keys in client.processing().items():
                train = [str(k) for k in keys if str(k).startswith("train-")]
                if train:
                    pid = client.run(os.getpid, workers=[worker])[worker]
                    os.kill(pid, signal.SIGKILL)
                    killed = (worker, train[0])
                    break
            time.sleep(0.05)
        runner.join(timeout=600)
        assert killed is not None, "the train stage was never seen running on a worker"
        # the scheduler's record: the stage went to a worker again after the kill
        story = client.run_on_scheduler(lambda dask_scheduler: [list(t) for t in dask_scheduler.story(killed[1])])
    assert "error" not in outcome, outcome.get("error")
    assert sum(1 for entry in story if entry[2] == "processing") >= 2, story
    summary = outcome["summary"]
    assert summary.model_version == "1" and summary.promoted
    uri = f"sqlite:///{fusion_home.resolve() / 'mlflow.db'}"
    # both URIs: without registry_uri the client follows MLflow's process-wide registry URI, which another
    # test in this process may have set
    registry = MlflowClient(tracking_uri=uri, registry_uri=uri)
    versions = registry.search_model_versions(f"name = '{summary.model_name}'")
    assert [str(v.version) for v in versions] == ["1"]
