"""The event bus: CloudEvents 1.0 (structured JSON) behind one interface.

Embedded default: an append-only JSONL log under FUSION_HOME. With
FUSION_KAFKA_BOOTSTRAP_SERVERS set, the same events go to Kafka topics.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime as dt
import fcntl
import re
import secrets
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, field_validator

from fusion.core.settings import EventsConfig

EventType = Literal[
    "fusion.data.ready",
    "fusion.data.validated",
    "fusion.data.rejected",
    "fusion.features.ready",
    "fusion.model.trained",
    "fusion.model.promoted",
    "fusion.ingest.requested",
]
TRACEPARENT = re.compile(r"^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")


class CloudEvent(BaseModel):
    model_config = ConfigDict(frozen=True, extra="allow")

    specversion: Literal["1.0"] = "1.0"
    id: str = Field(default_factory=lambda: str(uuid.uuid4()), min_length=1)
    source: str = Field(min_length=1)
    type: EventType
    subject: str | None = None
    time: dt.datetime = Field(default_factory=lambda: dt.datetime.now(dt.UTC))
    datacontenttype: Literal["application/json"] = "application/json"
    traceparent: str | None = None
    data: dict[str, Any] = Field(default_factory=dict)

    @field_validator("traceparent")
    @classmethod
    def _w3c(cls, v: str | None) -> str | None:
        if v is not None and not TRACEPARENT.match(v):
            raise ValueError("traceparent must be W3C: 00-<32 hex>-<16 hex>-<2 hex>")
        return v

    def to_json(self) -> str:
        return self.model_dump_json(exclude_none=True)


def new_traceparent() -> str:
    return f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"


def child_traceparent(parent: str) -> str:
    """Same trace id, a new span id: one id follows a run from request to model."""
    return f"00-{parent.split('-')[1]}-{secrets.token_hex(8)}-01"


class EventBus(Protocol):
    def publish(self, event: CloudEvent) -> None: ...


class JsonlEventBus:
    """Append-only JSONL log, one event a line; safe for concurrent writers (flock)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def publish(self, event: CloudEvent) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = (event.to_json() + "\n").encode()
        with open(self.path, "ab") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                f.write(line)
                f.flush()
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def read(self) -> list[CloudEvent]:
        if not self.path.exists():
            return []
        return [CloudEvent.model_validate_json(line) for line in self.path.read_text().splitlines() if line.strip()]


class KafkaEventBus:
    """CloudEvents on Kafka: structured JSON values, key = subject (the dataset, so order holds per
    dataset), acks from all in-sync replicas, idempotent retries. A publish returns once durable."""

    CONTENT_TYPE = ("content-type", b"application/cloudevents+json")

    def __init__(self, bootstrap_servers: str, config: EventsConfig) -> None:
        self.config = config
        self.bootstrap_servers = bootstrap_servers
        ensure_topics(bootstrap_servers, all_topics(config), config)
        self.producer = durable_producer(bootstrap_servers, "fusion-events", config)

    def publish(self, event: CloudEvent) -> None:
        topic = self.config.topic_for(event.type)
        key = event.subject.encode() if event.subject else None
        future = self.producer.send(topic, key=key, value=event.to_json().encode(), headers=[self.CONTENT_TYPE])
        future.get(timeout=self.config.timeout_s)

    def close(self) -> None:
        self.producer.close(timeout=self.config.timeout_s)


def durable_producer(bootstrap_servers: str, client_id: str, config: EventsConfig) -> Any:
    """A producer whose sends are acknowledged by all in-sync replicas, retried without duplicates."""
    from kafka import KafkaProducer

    timeout_ms = int(config.timeout_s * 1000)
    return KafkaProducer(
        **config.security.client_options(),
        bootstrap_servers=bootstrap_servers,
        client_id=client_id,
        acks="all",
        retries=10,
        enable_idempotence=True,
        max_block_ms=timeout_ms,
        request_timeout_ms=timeout_ms,
    )


def all_topics(config: EventsConfig) -> list[str]:
    types = [t for t in EventType.__args__ if t != "fusion.ingest.requested"]  # type: ignore[attr-defined]
    return sorted({*(config.topic_for(t) for t in types), config.requests_topic, config.deadletter_topic})


def ensure_topics(bootstrap_servers: str, topics: list[str], config: EventsConfig) -> None:
    """Create the topics that do not exist yet (the broker does not auto-create them), and return once every
    partition of each has a leader in the broker's metadata: a consumer that subscribes before then is given
    no partitions and waits for its next metadata refresh (kafka-python's: 5 minutes)."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import KafkaError, TopicAlreadyExistsError

    try:
        admin = KafkaAdminClient(
            **config.security.client_options(),
            bootstrap_servers=bootstrap_servers,
            client_id="fusion-admin",
            request_timeout_ms=int(config.timeout_s * 1000),
            bootstrap_timeout_ms=int(config.timeout_s * 1000),
        )
    except KafkaError as exc:
        raise ConnectionError(f"Kafka at {bootstrap_servers} is not reachable: {exc!r}") from exc
    try:
        missing = sorted(set(topics) - set(admin.list_topics()))
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):  # created meanwhile by another process
                admin.create_topics(
                    [NewTopic(t, config.partitions, config.replication_factor) for t in missing], timeout_ms=10_000
                )
        deadline = time.monotonic() + config.timeout_s
        while (waiting := leaderless(admin.describe_topics(topics))) and time.monotonic() < deadline:
            time.sleep(0.1)
        if waiting:
            raise ConnectionError(
                f"Kafka at {bootstrap_servers}: no leader for {', '.join(waiting)} after {config.timeout_s} s"
            )
    finally:
        admin.close()


def leaderless(described: list[dict[str, Any]]) -> list[str]:
    """The topics of a metadata answer (kafka-python's `describe_topics`) not served yet: unknown to the broker
    or without a leader (error codes 3 and 5), or a partition without a leader. Other errors (not authorized
    to describe, say) are not waited for: the client that uses the topic reports them."""
    return sorted(
        t["name"]
        for t in described
        if t["error_code"] in (3, 5)
        or (t["error_code"] == 0 and (not t["partitions"] or any(p["leader_id"] < 0 for p in t["partitions"])))
    )


_BUSES: dict[tuple[str, str | None, str], EventBus] = {}
_BUSES_LOCK = threading.Lock()


atexit.register(lambda: close_event_buses())  # flush before the interpreter and its logging shut down


def event_bus(home: Path, kafka_bootstrap_servers: str | None, config: EventsConfig) -> EventBus:
    """The bus the settings choose, one per process (a Kafka producer is costly to open)."""
    key = (str(home), kafka_bootstrap_servers, config.model_dump_json())
    with _BUSES_LOCK:
        if key not in _BUSES:
            if kafka_bootstrap_servers:
                _BUSES[key] = KafkaEventBus(kafka_bootstrap_servers, config)
            else:
                _BUSES[key] = JsonlEventBus(home / "events" / "events.jsonl")
        return _BUSES[key]


def close_event_buses() -> None:
    """Close every cached bus (flushes Kafka producers); later calls open new ones."""
    with _BUSES_LOCK:
        buses = list(_BUSES.values())
        _BUSES.clear()
    for bus in buses:
        if isinstance(bus, KafkaEventBus):
            bus.close()


@dataclass(frozen=True)
class EventSink:
    """Where events go, as plain values a task can carry to any Dask worker."""

    home: Path
    kafka_bootstrap_servers: str | None
    config: EventsConfig

    def bus(self) -> EventBus:
        return event_bus(self.home, self.kafka_bootstrap_servers, self.config)
