"""From a Kafka request to a registered model: trigger -> Prefect server -> process worker -> flow -> Kafka events
and a champion in the MLflow server's registry."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from fusion.core.events import CloudEvent
from tests.browser import page_shows
from tests.conftest import jaeger_otlp
from tests.services.support import (
    STAGES,
    WORKER_LOG,
    TriggerProcess,
    card_model_name,
    card_request,
    consume,
    isolated_config,
    runs_for,
    send,
    wait_for_runs,
    wait_until_final,
)

pytestmark = pytest.mark.services


def test_request_becomes_a_completed_run_whose_events_share_its_trace(
    kafka_bootstrap: str,
    prefect_api: str,
    mlflow_server: str,
    jaeger: str,
    worker: None,
    browser: Any,
    tmp_path: Path,
) -> None:
    from tests.datasets.card_transactions import write

    observed = {"FUSION_LOG_FORMAT": "json", "OTEL_EXPORTER_OTLP_ENDPOINT": jaeger_otlp()}
    trigger = TriggerProcess(kafka_bootstrap, prefect_api, tmp_path, observed)
    worker_log_start = WORKER_LOG.stat().st_size
    try:
        paths = write(tmp_path / "data")
        events = isolated_config()
        trace_id = uuid.uuid4().hex
        event_id = f"e2e-{uuid.uuid4().hex[:8]}"
        model_name = card_model_name(event_id)
        # everything else a run needs, as overrides: its own home, the accounts table, Kafka topics, the
        # MLflow server and a registered model of its own there
        request = card_request(
            event_id,
            "/tests/e2e",
            paths,
            tmp_path / "home",
            traceparent=f"00-{trace_id}-{uuid.uuid4().hex[:16]}-01",
            kafka_bootstrap_servers=kafka_bootstrap,
            mlflow_tracking_uri=mlflow_server,
            events={"topics": events.topics},
        )
        send(kafka_bootstrap, trigger.requests_topic, [request])
        (run,) = wait_for_runs(prefect_api, event_id)
        state = wait_until_final(prefect_api, run["id"], timeout_s=300)["state"]["type"]
        assert state == "COMPLETED", state
        assert_logs_are_json_lines(WORKER_LOG, worker_log_start, run["id"], trace_id)
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
    trigger_lines = [json.loads(line) for line in trigger.stderr.read_text().splitlines()]  # each one JSON
    assert any(line.get("run_id") == run["id"] and line.get("trace_id") == trace_id for line in trigger_lines)
    assert_one_trace_in_jaeger(jaeger, trace_id, run["id"])


STAGE_NAMES = [
    "fingerprint",
    "ingest",
    "validate",
    "features",
    "train",
    "evaluate",
    "register",
    "promote",
    "online-features",
]


def assert_logs_are_json_lines(log: Path, start: int, run_id: str, trace_id: str) -> None:
    """Every line the worker wrote while the run ran (the worker's, the flow run process's, its Dask
    workers') is one JSON object with the standard keys; the run's own lines name it and its stages."""
    with log.open("rb") as written:
        written.seek(start)
        text = written.read().decode()
    lines = []
    for number, line in enumerate(text.splitlines(), 1):
        try:
            lines.append(json.loads(line))
        except ValueError:
            pytest.fail(f"worker log line {number} is not JSON: {line[:300]}")
    assert all({"timestamp", "level", "logger", "message"} <= set(line) for line in lines)
    mine = [line for line in lines if line.get("run_id") == run_id]
    assert {line.get("stage") for line in mine} >= set(STAGE_NAMES), "the run's lines do not name each stage"
    assert {line["trace_id"] for line in mine if "trace_id" in line} == {trace_id}


def assert_one_trace_in_jaeger(jaeger: str, trace_id: str, run_id: str) -> None:
    """Jaeger holds one trace for the request: the trigger's consume span -> its run creation -> the run ->
    a span per stage, each the child of the one before in that chain."""
    deadline = time.monotonic() + 30
    spans: dict[str, Any] = {}
    while time.monotonic() < deadline:
        found = httpx.get(f"{jaeger}/api/traces/{trace_id}", timeout=10)
        if found.status_code == 200 and found.json()["data"]:
            (trace,) = found.json()["data"]
            spans = {s["operationName"]: s for s in trace["spans"]}
            if {f"stage {name}" for name in STAGE_NAMES} <= set(spans):
                break
        time.sleep(1)
    assert "trigger fusion.ingest.requested" in spans, sorted(spans)

    def parent(name: str) -> str:
        (reference,) = spans[name]["references"]
        return str(reference["spanID"])

    run_span = next(s for n, s in spans.items() if n.startswith("run "))
    assert parent("create flow run") == spans["trigger fusion.ingest.requested"]["spanID"]
    assert parent(run_span["operationName"]) == spans["create flow run"]["spanID"]
    assert {"key": "fusion.run_id", "type": "string", "value": run_id} in run_span["tags"]
    for name in STAGE_NAMES:
        assert parent(f"stage {name}") == run_span["spanID"], name


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
