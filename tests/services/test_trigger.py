"""`fusion trigger` as a process, against the real Kafka broker and Prefect server from infra/local.

Runs are created on the `training_pipeline/triggered` deployment registered from prefect.yaml; no worker
runs here, so created runs stay scheduled and are counted through the Prefect API.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from kafka import KafkaProducer

from tests.conftest import REPO, SERVICES, _service
from tests.services.test_kafka_events import consume

pytestmark = pytest.mark.services


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[str]:
    service = _service("prefect")
    next(service)
    url = f"http://127.0.0.1:{os.environ.get('FUSION_PREFECT_PORT', '4200')}/api"
    env = {**os.environ, "PREFECT_API_URL": url, "FUSION_PROJECT_DIR": str(REPO)}
    prefect = str(Path(sys.executable).parent / "prefect")
    if subprocess.run(
        [prefect, "work-pool", "inspect", "fusion-local"], env=env, capture_output=True, check=False
    ).returncode:
        subprocess.run(
            [prefect, "work-pool", "create", "fusion-local", "--type", "process"],
            env=env,
            check=True,
            capture_output=True,
        )
    deployed = subprocess.run(
        [prefect, "--no-prompt", "deploy", "--all"], cwd=REPO, env=env, capture_output=True, text=True, check=False
    )
    assert deployed.returncode == 0, deployed.stdout[-2000:] + deployed.stderr[-2000:]
    yield url
    next(service, None)


@pytest.fixture(scope="session")
def kcat() -> str:
    subprocess.run([str(SERVICES), "tools"], check=True, capture_output=True, timeout=600)
    path = shutil.which("kcat")
    assert path, "kcat was not installed"
    return path


class TriggerProcess:
    def __init__(self, bootstrap: str, api: str, tmp: Path) -> None:
        prefix = f"t{uuid.uuid4().hex[:8]}"
        self.bootstrap = bootstrap
        self.api = api
        self.requests_topic = f"{prefix}.requests"
        self.deadletter_topic = f"{prefix}.deadletter"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("FUSION_", "PREFECT_"))}
        env.update(
            {
                "FUSION_HOME": str(tmp / "home"),
                "FUSION_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
                "FUSION_EVENTS__REQUESTS_TOPIC": self.requests_topic,
                "FUSION_EVENTS__DEADLETTER_TOPIC": self.deadletter_topic,
                "FUSION_EVENTS__CONSUMER_GROUP": f"{prefix}-trigger",
                "PREFECT_API_URL": api,
            }
        )
        self.stderr = tmp / "trigger.err"
        self.process = subprocess.Popen(
            [str(Path(sys.executable).parent / "fusion"), "trigger"],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=self.stderr.open("w"),
        )
        deadline = time.monotonic() + 60
        while "fusion trigger:" not in self.stderr.read_text():
            assert self.process.poll() is None, self.stderr.read_text()[-3000:]
            assert time.monotonic() < deadline, "trigger did not start"
            time.sleep(0.2)

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=30)


@pytest.fixture
def trigger(kafka_bootstrap: str, prefect_api: str, tmp_path: Path) -> Iterator[TriggerProcess]:
    process = TriggerProcess(kafka_bootstrap, prefect_api, tmp_path)
    yield process
    if process.process.poll() is None:
        assert process.stop() == 0, process.stderr.read_text()[-3000:]


def request(event_id: str, dataset: str = "flights", **data: Any) -> bytes:
    return json.dumps(
        {
            "specversion": "1.0",
            "id": event_id,
            "source": "/tests/trigger",
            "type": "fusion.ingest.requested",
            "traceparent": f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01",
            "data": {"dataset": dataset, **data},
        }
    ).encode()


def runs_for(api: str, event_id: str) -> list[dict[str, Any]]:
    body = {"flow_runs": {"tags": {"all_": [f"event:{event_id}"]}}}
    response = httpx.post(f"{api}/flow_runs/filter", json=body, timeout=10)
    response.raise_for_status()
    runs: list[dict[str, Any]] = response.json()
    return runs


def wait_for_runs(api: str, event_id: str, timeout_s: float = 30) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        runs = runs_for(api, event_id)
        if runs:
            return runs
        time.sleep(0.2)
    return []


def send(bootstrap: str, topic: str, payloads: list[bytes]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", max_request_size=2_000_000)
    for payload in payloads:
        producer.send(topic, value=payload, key=b"flights")
    producer.flush()
    producer.close()


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
    assert run["parameters"] == {
        "config": "configs/flights.yaml",
        "traceparent": sent["traceparent"],
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
