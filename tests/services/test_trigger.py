"""`fusion trigger` as a process, against the real Kafka broker and Prefect server from infra/local.

Runs are created on the `training_pipeline/triggered` deployment registered from prefect.yaml; no worker
runs here, so created runs stay scheduled and are counted through the Prefect API.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import services
from tests.services.support import (
    TriggerProcess,
    consume,
    delete_scheduled_runs,
    request,
    runs_for,
    send,
    wait_for_runs,
)

pytestmark = pytest.mark.services


@pytest.fixture
def trigger(kafka_bootstrap: str, prefect_api: str, tmp_path: Path) -> Iterator[TriggerProcess]:
    process = TriggerProcess(kafka_bootstrap, prefect_api, tmp_path)
    yield process
    if process.process.poll() is None:
        assert process.stop() == 0, process.stderr.read_text()[-3000:]
    delete_scheduled_runs(prefect_api)


def test_requests_from_kcat_and_kafka_python_each_create_a_run(trigger: TriggerProcess, kcat: str) -> None:
    by_kcat, by_python = f"kcat-{uuid.uuid4().hex[:8]}", f"py-{uuid.uuid4().hex[:8]}"
    payload = request(by_kcat, uri="/data/flights-2014-01.parquet", params={"dataset": {"gate": {"min_delta": 0.01}}})
    subprocess.run(
        [kcat, "-P", "-b", trigger.bootstrap, "-t", trigger.requests_topic, "-k", "flights"],
        input=payload,
        check=True,
        timeout=30,
    )
    send(trigger.bootstrap, trigger.requests_topic, [request(by_python)])
    (run,) = wait_for_runs(trigger.api, by_kcat)
    sent = json.loads(payload)
    parameters = dict(run["parameters"])
    # the run continues the request's trace as a child of the trigger's own span (its run creation)
    _, trace_id, parent_span, _ = parameters.pop("traceparent").split("-")
    assert trace_id == sent["traceparent"].split("-")[1] and parent_span != sent["traceparent"].split("-")[2]
    assert parameters == {
        "config": "configs/flights.yaml",
        "source_uri": "/data/flights-2014-01.parquet",
        "overrides": {"dataset": {"gate": {"min_delta": 0.01}}},
    }
    assert f"trace:{sent['traceparent'].split('-')[1]}" in run["tags"] and run["idempotency_key"] == by_kcat
    assert len(wait_for_runs(trigger.api, by_python)) == 1


def test_the_same_event_three_times_gives_one_run(trigger: TriggerProcess) -> None:
    event_id = f"dup-{uuid.uuid4().hex[:8]}"
    marker = f"after-{uuid.uuid4().hex[:8]}"
    send(trigger.bootstrap, trigger.requests_topic, [request(event_id)] * 3 + [request(marker)])
    # the marker comes after the three copies on the same partition: once it has a run, all were handled
    assert wait_for_runs(trigger.api, marker)
    assert len(runs_for(trigger.api, event_id)) == 1


def malformed(n: int) -> list[bytes]:
    good = json.loads(request("x"))
    kinds = [
        lambda i: b"{broken json " + str(i).encode(),
        lambda i: json.dumps({**good, "id": f"m{i}", "type": "fusion.data.ready"}).encode(),
        lambda i: json.dumps({k: v for k, v in good.items() if k != "data"} | {"id": f"m{i}"}).encode(),
        lambda i: json.dumps({**good, "id": f"m{i}", "data": {"dataset": 7}}).encode(),
        lambda i: json.dumps({**good, "id": f"m{i}", "data": {"dataset": "flights", "pad": "x" * 300_000}}).encode(),
        lambda i: json.dumps({**good, "id": f"m{i}", "data": {"dataset": "unknown_dataset"}}).encode(),
        lambda i: json.dumps([i]).encode(),
        lambda i: b"",
    ]
    return [kinds[i % len(kinds)](i) for i in range(n)]


def test_malformed_events_are_dead_lettered_and_the_consumer_lives(trigger: TriggerProcess) -> None:
    bad = malformed(100)
    send(trigger.bootstrap, trigger.requests_topic, bad)
    letters = consume(trigger.bootstrap, [trigger.deadletter_topic], 100, timeout_s=60)
    assert len(letters) == 100
    bodies = [json.loads(r.value) for r in letters]
    assert all(b["reason"] and b["source"]["topic"] == trigger.requests_topic for b in bodies)
    reasons = " | ".join(b["reason"] for b in bodies)
    for expected in (
        "not JSON",
        "type: Input should be",
        "data: Field required",
        "exceeds the limit",
        "no config",
        "got list",
        "empty payload",
    ):
        assert expected in reasons
    assert trigger.process.poll() is None  # still consuming
    assert all(not runs_for(trigger.api, f"m{i}") for i in range(0, 100, 7))
    # and it still serves a good request after all that
    ok = f"ok-{uuid.uuid4().hex[:8]}"
    send(trigger.bootstrap, trigger.requests_topic, [request(ok)])
    assert len(wait_for_runs(trigger.api, ok)) == 1


def test_sigterm_stops_it_cleanly(trigger: TriggerProcess) -> None:
    assert trigger.stop() == 0
    assert "fusion trigger stopped" in trigger.stderr.read_text()


def test_broker_restart_with_events_in_flight_loses_none_and_duplicates_none(trigger: TriggerProcess) -> None:
    before = [f"pre-{i}-{uuid.uuid4().hex[:6]}" for i in range(15)]
    after = [f"post-{i}-{uuid.uuid4().hex[:6]}" for i in range(15)]
    send(trigger.bootstrap, trigger.requests_topic, [request(e) for e in before])
    services("down", "kafka", timeout=120)
    services("up", "kafka", timeout=300)
    send(trigger.bootstrap, trigger.requests_topic, [request(e) for e in after])
    deadline = time.monotonic() + 120
    pending = set(before + after)
    while pending and time.monotonic() < deadline:
        pending = {e for e in pending if not runs_for(trigger.api, e)}
        time.sleep(0.5)
    assert not pending, f"{len(pending)} requests never became runs"
    assert all(len(runs_for(trigger.api, e)) == 1 for e in before + after)
    assert trigger.process.poll() is None


def test_prefect_api_down_holds_the_request_until_it_is_back(trigger: TriggerProcess) -> None:
    event_id = f"down-{uuid.uuid4().hex[:8]}"
    services("down", "prefect", timeout=120)
    try:
        send(trigger.bootstrap, trigger.requests_topic, [request(event_id)])
        time.sleep(5)  # the trigger sees it, cannot create the run, backs off without committing
        assert trigger.process.poll() is None
    finally:
        services("up", "prefect", timeout=300)
    assert len(wait_for_runs(trigger.api, event_id, timeout_s=60)) == 1
    assert "cannot create the run for event " + event_id in trigger.stderr.read_text()
