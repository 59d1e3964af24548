from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from fusion.core.events import CloudEvent, JsonlEventBus, child_traceparent, leaderless, new_traceparent


def test_cloudevent_is_structured_json_with_required_attributes() -> None:
    trace = new_traceparent()
    event = CloudEvent(
        source="/fusion/test", type="fusion.data.ready", subject="flights", traceparent=trace, data={"rows": 3}
    )
    body = json.loads(event.to_json())
    assert body["specversion"] == "1.0" and body["type"] == "fusion.data.ready"
    assert body["id"] and body["time"] and body["datacontenttype"] == "application/json"
    assert body["traceparent"] == trace and body["data"] == {"rows": 3}


def test_invalid_events_are_refused() -> None:
    with pytest.raises(ValidationError, match="type"):
        CloudEvent(source="/x", type="fusion.unknown")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="traceparent"):
        CloudEvent(source="/x", type="fusion.data.ready", traceparent="not-a-trace")


def test_child_span_keeps_the_trace_id() -> None:
    parent = new_traceparent()
    child = child_traceparent(parent)
    assert child.split("-")[1] == parent.split("-")[1] and child != parent


def test_jsonl_bus_appends_in_order(tmp_path: Path) -> None:
    bus = JsonlEventBus(tmp_path / "events" / "events.jsonl")
    sent = [CloudEvent(source="/x", type="fusion.data.ready", data={"i": i}) for i in range(5)]
    for event in sent:
        bus.publish(event)
    assert [e.id for e in bus.read()] == [e.id for e in sent]
    assert [e.data["i"] for e in bus.read()] == list(range(5))


def test_topics_are_waited_for_until_each_partition_has_a_leader() -> None:
    """What `ensure_topics` waits for, on metadata answers shaped as kafka-python's `describe_topics` gives them."""

    def topic(name: str, error: int = 0, leaders: tuple[int, ...] = (1,)) -> dict[str, object]:
        return {"name": name, "error_code": error, "partitions": [{"leader_id": leader} for leader in leaders]}

    described = [
        topic("served", leaders=(1, 2)),
        topic("unknown", error=3, leaders=()),
        topic("electing", error=5, leaders=()),
        topic("one-partition-leaderless", leaders=(1, -1)),
        topic("no-partitions-yet", leaders=()),
        topic("not-authorized", error=29, leaders=()),  # reported by the client that uses it, not waited for
    ]
    assert leaderless(described) == ["electing", "no-partitions-yet", "one-partition-leaderless", "unknown"]
    assert leaderless([topic("served")]) == []
