"""A promotion and a served prediction in Jaeger: `fusion serve` (its own process and Ray instance, exporting
over OTLP) reloads when the run's `fusion.model.promoted` event arrives on Kafka, and that load is a span of
the run's trace; a prediction is a server span with its cache and model steps, in the caller's trace."""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import polars as pl
import pytest

from fusion.core.net import free_port
from tests.conftest import REPO, jaeger_otlp
from tests.services.support import consume
from tests.serving.conftest import start_fusion_serve

pytestmark = pytest.mark.services
CONFIG = REPO / "configs" / "card_transactions.yaml"


def trace_spans(jaeger: str, trace_id: str, wanted: set[str], timeout_s: float = 60) -> dict[str, Any]:
    """The trace's spans by operation name, once all of `wanted` are there (or the timeout)."""
    deadline = time.monotonic() + timeout_s
    spans: dict[str, Any] = {}
    while time.monotonic() < deadline:
        found = httpx.get(f"{jaeger}/api/traces/{trace_id}", timeout=10)
        if found.status_code == 200 and found.json()["data"]:
            (trace,) = found.json()["data"]
            spans = {
                s["operationName"]: {**s, "service": trace["processes"][s["processID"]]["serviceName"]}
                for s in trace["spans"]
            }
            if wanted <= set(spans):
                break
        time.sleep(1)
    assert wanted <= set(spans), f"missing {sorted(wanted - set(spans))} in {sorted(spans)}"
    return spans


def parent_of(span: dict[str, Any]) -> str:
    (reference,) = span["references"]
    return str(reference["spanID"])


@pytest.fixture
def server(kafka_bootstrap: str, jaeger: str, tmp_path: Path) -> Iterator[dict[str, Any]]:
    from fusion.core.events import ensure_topics
    from fusion.core.settings import EventsConfig
    from tests.datasets.card_transactions import write

    paths = write(tmp_path / "data")
    port = free_port()
    name = f"card_fraud_traced_{uuid.uuid4().hex[:8]}"
    ensure_topics(kafka_bootstrap, ["fusion.model.promoted"], EventsConfig())  # before the replica subscribes
    overrides = {
        "FUSION_HOME": str(tmp_path / "home"),
        "FUSION_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "FUSION_DATASET__MODEL__REGISTERED_NAME": name,
        "FUSION_DATASET__SOURCE__TABLES__TRANSACTIONS__URI": str(paths["transactions"]),
        "FUSION_DATASET__SOURCE__TABLES__ACCOUNTS__URI": str(paths["accounts"]),
        "FUSION_SERVING__PORT": str(port),
        "FUSION_SERVING__POLL_S": "600",  # only the promotion event may cause the load
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FUSION_", "OTEL_"))}
    env |= overrides | {
        "OTEL_EXPORTER_OTLP_ENDPOINT": jaeger_otlp(),
        "FUSION_LOG_FORMAT": "json",
        "RAY_ADDRESS": "local",  # a Ray instance of its own
    }
    stderr = tmp_path / "serve.err"
    process = start_fusion_serve(CONFIG, env, stderr)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while "serving " not in stderr.read_text():
            assert process.poll() is None, f"fusion serve exited: {stderr.read_text()[-3000:]}"
            assert time.monotonic() < deadline, "fusion serve did not start in 240 s"
            time.sleep(1)
        yield {"url": url, "name": name, "paths": paths, "overrides": overrides, "stderr": stderr}
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()


def test_the_promotion_and_a_prediction_are_spans_of_their_traces(
    server: dict[str, Any], kafka_bootstrap: str, jaeger: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.training_pipeline import run_pipeline
    from fusion.core.events import CloudEvent
    from fusion.core.settings import load_settings

    for key, value in server["overrides"].items():
        monkeypatch.setenv(key, value)
    trace_id = uuid.uuid4().hex
    summary = run_pipeline(load_settings(CONFIG), traceparent=f"00-{trace_id}-{uuid.uuid4().hex[:16]}-01")
    assert summary.promoted and summary.model_name == server["name"]
    mine: list[CloudEvent] = []
    deadline = time.monotonic() + 60
    while not mine and time.monotonic() < deadline:  # the topic is shared: read it all, keep this model's
        records = consume(kafka_bootstrap, ["fusion.model.promoted"], 100_000, timeout_s=10)
        events = [CloudEvent.model_validate_json(r.value) for r in records]
        mine = [e for e in events if e.data.get("model_name") == server["name"]]
    (event,) = mine
    assert event.traceparent is not None and event.traceparent.split("-")[1] == trace_id

    # the replica loads on the event: its span is a child of the promote stage's span, in the run's trace
    deadline = time.monotonic() + 120
    while httpx.get(f"{server['url']}/v2/health/ready", timeout=5).status_code != 200:
        assert time.monotonic() < deadline, "the promotion did not reach the replica"
        time.sleep(1)
    spans = trace_spans(jaeger, trace_id, {"serving reload"})
    reload = spans["serving reload"]
    assert reload["service"] == "fusion-serving"
    assert parent_of(reload) == event.traceparent.split("-")[2]
    assert {"key": "fusion.version", "type": "string", "value": summary.model_version} in reload["tags"]

    # a prediction in the caller's trace: HTTP span -> cache lookup and model
    rows = pl.read_csv(server["paths"]["transactions"], n_rows=2).drop("is_fraud").to_dicts()
    caller = uuid.uuid4().hex
    calling_span = uuid.uuid4().hex[:16]
    answer = httpx.post(
        f"{server['url']}/v1/predict",
        json={"records": rows},
        headers={"traceparent": f"00-{caller}-{calling_span}-01"},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    spans = trace_spans(jaeger, caller, {"POST /v1/predict", "cache lookup", "model"})
    http = spans["POST /v1/predict"]
    assert parent_of(http) == calling_span
    by_id = {s["spanID"]: s for s in spans.values()}

    def ancestors(span: dict[str, Any]) -> set[str]:
        found = set()
        while span["references"] and parent_of(span) in by_id:
            span = by_id[parent_of(span)]
            found.add(span["spanID"])
        return found

    assert http["spanID"] in ancestors(spans["cache lookup"]) & ancestors(spans["model"])

    # the serve command's own lines are JSON too
    lines = [json.loads(line) for line in server["stderr"].read_text().splitlines()]
    assert any(line["message"].startswith("serving ") for line in lines)
