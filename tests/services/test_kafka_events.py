"""The Kafka backend of the event bus, against a real single-node KRaft broker (infra/local)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from kafka import KafkaAdminClient

from fusion.core.events import CloudEvent, EventSink, KafkaEventBus, all_topics, new_traceparent
from tests.services.support import STAGES, consume, isolated_config

pytestmark = pytest.mark.services


def test_events_are_structured_cloudevents_keyed_by_dataset(kafka_bootstrap: str) -> None:
    config = isolated_config()
    bus = KafkaEventBus(kafka_bootstrap, config)
    sent = [
        CloudEvent(source="/test", type="fusion.data.ready", subject=("flights" if i % 2 else "cards"), data={"i": i})
        for i in range(40)
    ]
    for event in sent:
        bus.publish(event)
    bus.close()
    records = consume(kafka_bootstrap, [config.topic_for("fusion.data.ready")], len(sent))
    assert len(records) == len(sent)
    for record in records:
        assert dict(record.headers)["content-type"] == b"application/cloudevents+json"
        body = json.loads(record.value)
        assert body["specversion"] == "1.0" and body["type"] == "fusion.data.ready"
        assert record.key.decode() == body["subject"]
    # one dataset, one partition: its events keep their order
    for dataset in ("flights", "cards"):
        got = [
            json.loads(r.value)["data"]["i"]
            for r in sorted(records, key=lambda r: r.offset)
            if r.key == dataset.encode()
        ]
        assert got == [e.data["i"] for e in sent if e.subject == dataset]
        assert len({r.partition for r in records if r.key == dataset.encode()}) == 1


def test_topics_are_created_from_config(kafka_bootstrap: str) -> None:
    config = isolated_config(partitions=2)
    KafkaEventBus(kafka_bootstrap, config).close()
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    expected = dict.fromkeys(all_topics(config), 2)
    try:
        # A topic just created can be described before its partitions are in the broker's metadata
        # (0 partitions): ask again for a few seconds, then compare.
        deadline = time.monotonic() + 15
        while True:
            described = {t["name"]: len(t["partitions"]) for t in admin.describe_topics(all_topics(config))}
            if described == expected or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    finally:
        admin.close()
    assert described == expected
    assert config.deadletter_topic in described and config.requests_topic in described


def test_unreachable_broker_is_a_clear_error() -> None:
    started = time.monotonic()
    with pytest.raises(ConnectionError, match=r"Kafka at 127\.0\.0\.1:1 is not reachable"):
        KafkaEventBus("127.0.0.1:1", isolated_config(timeout_s=2))
    assert time.monotonic() - started < 30


def test_pipeline_stage_events_arrive_in_order_on_one_trace(
    kafka_bootstrap: str, fusion_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.training_pipeline import run_pipeline
    from tests.datasets.card_transactions import write

    config = isolated_config()
    paths = write(fusion_home / "examples")
    monkeypatch.setenv("FUSION_DATASET__SOURCE__TABLES__TRANSACTIONS__URI", str(paths["transactions"]))
    monkeypatch.setenv("FUSION_DATASET__SOURCE__TABLES__ACCOUNTS__URI", str(paths["accounts"]))
    monkeypatch.setenv("FUSION_KAFKA_BOOTSTRAP_SERVERS", kafka_bootstrap)
    monkeypatch.setenv("FUSION_EVENTS__TOPICS", json.dumps(config.topics))
    trace = new_traceparent()
    summary = run_pipeline(Path("configs/card_transactions.yaml"), traceparent=trace)
    assert summary.promoted
    # a generous wait: on 2 busy cores a new consumer group's first fetch has taken over 30 s
    records = consume(kafka_bootstrap, [config.topic_for(t) for t in STAGES], len(STAGES), timeout_s=90)
    events = sorted((CloudEvent.model_validate_json(r.value) for r in records), key=lambda e: e.time)
    assert [e.type for e in events] == STAGES
    assert {r.topic for r in records} == {config.topic_for(t) for t in STAGES}
    assert {e.traceparent.split("-")[1] for e in events if e.traceparent} == {trace.split("-")[1]}
    assert all(e.subject == "card_transactions" and e.data["run_id"] == summary.run_id for e in events)
    assert not (fusion_home / "events" / "events.jsonl").exists()  # Kafka replaced the embedded log


def test_sink_reuses_one_producer_per_process(kafka_bootstrap: str, tmp_path: Path) -> None:
    config = isolated_config()
    sink = EventSink(tmp_path, kafka_bootstrap, config)
    assert sink.bus() is sink.bus()
