"""`fusion run`'s early LocalCluster (fusion/runtime.py `start_local_cluster`): worker processes that have
imported the stages' code by the time the run asks for the address, closed after."""

from __future__ import annotations

import os
import sys

import pytest

pytestmark = pytest.mark.integration


def test_the_early_cluster_has_worker_processes_with_the_stage_code_and_closes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from distributed import Client

    from fusion.core.settings import load_settings
    from fusion.runtime import start_local_cluster

    monkeypatch.delenv("FUSION_DASK_ADDRESS", raising=False)
    monkeypatch.setenv("FUSION_PIPELINE__DASK__PROCESSES", "true")
    monkeypatch.setenv("FUSION_PIPELINE__DASK__N_WORKERS", "2")
    monkeypatch.setenv("FUSION_PIPELINE__DASK__THREADS_PER_WORKER", "1")
    early = start_local_cluster(load_settings("configs/flights.yaml"))
    assert early is not None
    try:
        address = early.address()
        with Client(address) as client:
            loaded = client.run(lambda: "tasks.pipeline_tasks" in sys.modules)
            pids = client.run(os.getpid)
    finally:
        early.close()
    assert list(loaded.values()) == [True, True]
    assert len(set(pids.values())) == 2 and os.getpid() not in pids.values()
    assert early.cluster.status.name == "closed"
