"""Helpers shared by the tests against real services."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from kafka import KafkaConsumer, KafkaProducer

from fusion.core.settings import EventsConfig
from tests.conftest import REPO, SERVICES_STATE

WORKER_LOG = SERVICES_STATE / "prefect-worker" / "log"  # the local worker's (services.sh)

STAGES = [
    "fusion.data.ready",
    "fusion.data.validated",
    "fusion.features.ready",
    "fusion.model.trained",
    "fusion.model.promoted",
]


def isolated_config(**extra: Any) -> EventsConfig:
    """Topics of this test alone, so tests share the broker without seeing each other's events."""
    prefix = f"t{uuid.uuid4().hex[:8]}"
    types = [*STAGES, "fusion.data.rejected"]
    return EventsConfig(
        topics={t: f"{prefix}.{t}" for t in types},
        requests_topic=f"{prefix}.requests",
        deadletter_topic=f"{prefix}.deadletter",
        **extra,
    )


def consume(bootstrap: str, topics: list[str], count: int, timeout_s: float = 30, **options: Any) -> list[Any]:
    """Up to `count` records from the start of `topics`, read by partition assignment, not a consumer
    group: a group's first assignment can be computed before the new subscription's metadata arrives,
    leaving the consumer with no partitions until its next metadata refresh (minutes). `options`: more
    KafkaConsumer arguments (security)."""
    from kafka import TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=50, **options)
    records: list[Any] = []
    deadline = time.monotonic() + timeout_s
    try:
        partitions: list[TopicPartition] = []
        for topic in topics:
            found = consumer.partitions_for_topic(topic)
            while not found and time.monotonic() < deadline:  # not created yet
                time.sleep(0.2)
                found = consumer.partitions_for_topic(topic)
            partitions += [TopicPartition(topic, p) for p in sorted(found)]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        while len(records) < count and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=200).values():
                records.extend(batch)
    finally:
        consumer.close()
    return records


class TriggerProcess:
    def __init__(self, bootstrap: str, api: str, tmp: Path, extra_env: dict[str, str] | None = None) -> None:
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
                **(extra_env or {}),
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


def delete_scheduled_runs(api: str) -> None:
    """Runs created here are never meant to execute: remove them before a worker could pick them up."""
    body = {"flow_runs": {"tags": {"all_": ["fusion-trigger"]}, "state": {"type": {"any_": ["SCHEDULED", "PENDING"]}}}}
    for run in httpx.post(f"{api}/flow_runs/filter", json=body, timeout=10).json():
        httpx.delete(f"{api}/flow_runs/{run['id']}", timeout=10)


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


FINAL_STATES = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")


def flow_run(api: str, run_id: str) -> dict[str, Any]:
    found: dict[str, Any] = httpx.get(f"{api}/flow_runs/{run_id}", timeout=10).json()
    return found


def wait_until_final(api: str, run_id: str, timeout_s: float = 400) -> dict[str, Any]:
    """The flow run once its state is final, or as it is when `timeout_s` runs out."""
    deadline = time.monotonic() + timeout_s
    run = flow_run(api, run_id)
    while run["state"]["type"] not in FINAL_STATES and time.monotonic() < deadline:
        time.sleep(1)
        run = flow_run(api, run_id)
    return run


def card_request(
    event_id: str, source: str, paths: dict[str, Path], home: Path, *, traceparent: str | None = None, **params: Any
) -> bytes:
    """A `fusion.ingest.requested` event for a card_transactions run (tests/datasets) in a home of its own,
    registering a model named after the event (card_model_name); `params`: more settings overrides."""
    event: dict[str, Any] = {
        "specversion": "1.0",
        "id": event_id,
        "source": source,
        "type": "fusion.ingest.requested",
        "data": {
            "dataset": "card_transactions",
            "uri": str(paths["transactions"]),
            "params": {
                "home": str(home),
                "dataset": {
                    "source": {"tables": {"accounts": {"uri": str(paths["accounts"])}}},
                    "model": {"registered_name": card_model_name(event_id)},
                },
                **params,
            },
        },
    }
    if traceparent:
        event["traceparent"] = traceparent
    return json.dumps(event).encode()


def card_model_name(event_id: str) -> str:
    return "card_fraud_" + event_id.replace("-", "_")


def send(bootstrap: str, topic: str, payloads: list[bytes]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", max_request_size=2_000_000)
    for payload in payloads:
        producer.send(topic, value=payload, key=b"flights")
    producer.flush()
    producer.close()
