"""From a Kafka request to a registered model: trigger -> Prefect server -> process worker -> flow -> Kafka events
and a champion in the MLflow server's registry."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from fusion.core.events import CloudEvent
from tests.browser import page_shows
from tests.conftest import _service
from tests.services.support import (
    STAGES,
    TriggerProcess,
    consume,
    delete_scheduled_runs,
    isolated_config,
    runs_for,
    send,
    wait_for_runs,
)

pytestmark = pytest.mark.services


@pytest.fixture
def worker(prefect_api: str) -> Iterator[None]:
    delete_scheduled_runs(prefect_api)  # nothing but this test's run may reach the worker
    service = _service("prefect-worker")
    next(service)
    yield
    next(service, None)


def test_request_becomes_a_completed_run_whose_events_share_its_trace(
    kafka_bootstrap: str, prefect_api: str, mlflow_server: str, worker: None, browser: Any, tmp_path: Path
) -> None:
    from tests.datasets.card_transactions import write

    trigger = TriggerProcess(kafka_bootstrap, prefect_api, tmp_path)
    try:
        paths = write(tmp_path / "data")
        events = isolated_config()
        trace_id = uuid.uuid4().hex
        event_id = f"e2e-{uuid.uuid4().hex[:8]}"
        model_name = f"card_fraud_{event_id.replace('-', '_')}"
        payload = {
            "specversion": "1.0",
            "id": event_id,
            "source": "/tests/e2e",
            "type": "fusion.ingest.requested",
            "traceparent": f"00-{trace_id}-{uuid.uuid4().hex[:16]}-01",
            "data": {
                "dataset": "card_transactions",
                "uri": str(paths["transactions"]),
                # everything else a run needs, as overrides: its own home, the accounts table, Kafka topics,
                # the MLflow server and a registered model of its own there
                "params": {
                    "home": str(tmp_path / "home"),
                    "kafka_bootstrap_servers": kafka_bootstrap,
                    "mlflow_tracking_uri": mlflow_server,
                    "events": {"topics": events.topics},
                    "dataset": {
                        "source": {"tables": {"accounts": {"uri": str(paths["accounts"])}}},
                        "model": {"registered_name": model_name},
                    },
                },
            },
        }
        send(kafka_bootstrap, trigger.requests_topic, [json.dumps(payload).encode()])
        (run,) = wait_for_runs(prefect_api, event_id)
        deadline = time.monotonic() + 300
        state = run["state"]["type"]
        while state not in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") and time.monotonic() < deadline:
            time.sleep(1)
            state = httpx.get(f"{prefect_api}/flow_runs/{run['id']}", timeout=10).json()["state"]["type"]
        assert state == "COMPLETED", state
        records = consume(kafka_bootstrap, [events.topic_for(t) for t in STAGES], len(STAGES), timeout_s=30)
        stage_events = sorted((CloudEvent.model_validate_json(r.value) for r in records), key=lambda e: e.time)
        assert [e.type for e in stage_events] == STAGES
        assert {e.traceparent.split("-")[1] for e in stage_events if e.traceparent} == {trace_id}
        assert {e.data["run_id"] for e in stage_events} == {run["id"]}
        assert len(runs_for(prefect_api, event_id)) == 1
        assert not (tmp_path / "home" / "mlflow.db").exists()  # registered on the server, not a local store
        assert_champion_serves_from(mlflow_server, model_name)
        assert_the_uis_tell_it(browser, prefect_api.removesuffix("/api"), run["id"], mlflow_server, model_name)
    finally:
        assert trigger.stop() == 0


def assert_the_uis_tell_it(browser: Any, prefect: str, run_id: str, mlflow: str, model_name: str) -> None:
    """In a real browser: the Prefect UI lists the deployments and shows the completed run with its
    artifacts; the MLflow UI shows the registered model's champion alias."""
    page_shows(browser, f"{prefect}/deployments", ["triggered", "scheduled"], "prefect-deployments")
    page_shows(browser, f"{prefect}/runs/flow-run/{run_id}", ["Completed", "dataset:card_transactions"], "prefect-run")
    page_shows(
        browser,
        f"{prefect}/artifacts",
        ["card-transactions-validation", "card-transactions-metrics", "card-transactions-gate"],
        "prefect-artifacts",
    )
    found = httpx.post(
        f"{prefect}/api/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [run_id]}}}, timeout=10
    ).json()
    ids = {a["key"]: a["id"] for a in found if a["key"]}
    page_shows(browser, f"{prefect}/artifacts/artifact/{ids['card-transactions-gate']}", ["Reason:"], "prefect-gate")
    page_shows(
        browser,
        f"{prefect}/artifacts/artifact/{ids['card-transactions-validation']}",
        ["expectations met", "expect_column_values_to_not_be_null"],
        "prefect-validation",
    )
    page_shows(
        browser, f"{prefect}/artifacts/artifact/{ids['card-transactions-metrics']}", ["test ROC AUC"], "prefect-metrics"
    )
    page_shows(browser, f"{mlflow}/#/models/{model_name}", [model_name, "champion"], "mlflow-model")


def assert_champion_serves_from(tracking_uri: str, name: str) -> None:
    """The first version is the champion, and its artifacts come back from the server and predict."""
    import mlflow
    import numpy as np
    from mlflow import MlflowClient
    from mlflow.models import Model

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    version = client.get_model_version_by_alias(name, "champion")
    assert version.version == "1"
    source = client.get_model_version_download_uri(name, version.version)
    local = mlflow.artifacts.download_artifacts(artifact_uri=source, tracking_uri=tracking_uri)
    example = Model.load(local).load_input_example(local)
    assert example is not None and len(example) > 0
    scores = np.asarray(mlflow.pyfunc.load_model(local).predict(example), dtype=float)
    assert scores.shape[0] == len(example)
    assert np.all((scores >= 0) & (scores <= 1))
