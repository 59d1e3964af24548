"""Faults: the Prefect server restarted while a triggered run is in flight. The run ends in a final state
(completed, or failed or crashed with a reason), never stuck running; the request it came from makes one run,
also when the request arrives again while the server is down; a completed run registered one version."""

from __future__ import annotations

import datetime as dt
import time
import uuid
from pathlib import Path

import httpx
import pytest

from tests.conftest import services
from tests.services.support import (
    FINAL_STATES,
    TriggerProcess,
    card_model_name,
    card_request,
    flow_run,
    isolated_config,
    runs_for,
    send,
    wait_for_runs,
    wait_until_final,
)

pytestmark = pytest.mark.services


def completed_task_runs(api: str, run_id: str) -> int:
    body = {"flow_runs": {"id": {"any_": [run_id]}}, "task_runs": {"state": {"type": {"any_": ["COMPLETED"]}}}}
    return len(httpx.post(f"{api}/task_runs/filter", json=body, timeout=10).json())


def test_a_prefect_restart_mid_run_ends_the_run_cleanly_and_duplicates_nothing(
    kafka_bootstrap: str, prefect_api: str, worker: None, tmp_path: Path
) -> None:
    from mlflow import MlflowClient

    from tests.datasets.card_transactions import write

    trigger = TriggerProcess(kafka_bootstrap, prefect_api, tmp_path)
    home = tmp_path / "home"
    try:
        event_id = f"restart-{uuid.uuid4().hex[:8]}"
        request = card_request(
            event_id,
            "/tests/faults",
            write(tmp_path / "data"),
            home,
            kafka_bootstrap_servers=kafka_bootstrap,
            events={"topics": isolated_config().topics},
        )
        send(kafka_bootstrap, trigger.requests_topic, [request])
        (run,) = wait_for_runs(prefect_api, event_id, timeout_s=60)
        # in flight: running, with a stage done
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            state = flow_run(prefect_api, run["id"])["state"]["type"]
            assert state not in FINAL_STATES, f"the run ended ({state}) before the server could be restarted"
            if state == "RUNNING" and completed_task_runs(prefect_api, run["id"]) >= 1:
                break
            time.sleep(0.5)
        else:
            pytest.fail("the run never got going")
        down_at = dt.datetime.now(dt.UTC)
        services("down", "prefect", timeout=120)
        try:
            send(kafka_bootstrap, trigger.requests_topic, [request])  # the request again, while the API is down
            time.sleep(5)
        finally:
            services("up", "prefect", timeout=300)

        ended = wait_until_final(prefect_api, run["id"])
        state, message = ended["state"]["type"], ended["state"].get("message") or ""
        assert state in FINAL_STATES, f"the run is left {state} after the restart"
        assert dt.datetime.fromisoformat(ended["end_time"]) > down_at  # it was in flight when the server went
        assert [r["id"] for r in runs_for(prefect_api, event_id)] == [run["id"]]
        uri = f"sqlite:///{home.resolve() / 'mlflow.db'}"
        registry = MlflowClient(tracking_uri=uri, registry_uri=uri)
        versions = registry.search_model_versions(f"name = '{card_model_name(event_id)}'")
        if state == "COMPLETED":
            assert [str(v.version) for v in versions] == ["1"]
        else:  # failed cleanly: the state says why
            assert message, ended["state"]
            assert len(versions) <= 1
        assert trigger.process.poll() is None
    finally:
        assert trigger.stop() == 0
