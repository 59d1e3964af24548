"""The event bus: CloudEvents 1.0 (structured JSON) behind one interface.

Embedded default: an append-only JSONL log under FUSION_HOME. Kafka plugs in
behind the same `EventBus` protocol when FUSION_KAFKA_BOOTSTRAP_SERVERS is set.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import logging
import re
import secrets
import uuid
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, field_validator

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
log = logging.getLogger("fusion.events")


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


def build_event_bus(home: Path, kafka_bootstrap_servers: str | None) -> EventBus:
    if kafka_bootstrap_servers:
        raise NotImplementedError(
            "the Kafka event bus is not built yet (issue: Kafka event bus); unset FUSION_KAFKA_BOOTSTRAP_SERVERS"
        )
    return JsonlEventBus(home / "events" / "events.jsonl")
