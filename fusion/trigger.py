"""`fusion trigger`: Kafka ingest requests -> Prefect deployment runs.

Each record on the requests topic is checked against the `fusion.ingest.requested`
schema. An invalid one goes to the dead-letter topic with the reason and its
original bytes; a valid one creates a run of the configured deployment with
idempotency key = event id, so a redelivered or resent event never starts a
second run. The offset is committed only once the run exists (or the dead
letter is durable); while the Prefect API is down the consumer backs off and
retries the same record without committing.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
import logging
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from opentelemetry.trace import SpanKind
from prometheus_client import CollectorRegistry, Counter, Gauge
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fusion.core import tracing
from fusion.core.events import CloudEvent, durable_producer, ensure_topics
from fusion.core.logs import log_context
from fusion.core.settings import EventsConfig, load_settings, with_overrides
from tasks.check import check_settings

log = logging.getLogger("fusion.trigger")
MAX_EVENT_BYTES = 256 * 1024


class IngestRequest(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    dataset: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    uri: str | None = Field(None, min_length=1, description="fsspec URI of the new batch of the primary table")
    params: dict[str, Any] = Field(default_factory=dict, description="settings-tree overrides for this run")


class IngestRequested(CloudEvent):
    """A run request as it arrives: unlike events Fusion makes, id and specversion must be given
    (the id is the idempotency key)."""

    specversion: Literal["1.0"]
    id: str = Field(min_length=1, max_length=200)
    type: Literal["fusion.ingest.requested"]  # type: ignore[assignment]
    data: IngestRequest  # type: ignore[assignment]


class InvalidRequest(Exception):
    """Why a record cannot be a run request; goes to the dead-letter topic. `kind` is a short name of the
    reason (the dead-letter metric's label): empty, too_large, not_json, not_object, schema,
    unknown_dataset, bad_params."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


class TriggerMetrics:
    """The trigger's Prometheus metrics (served on `events.metrics_port` by `fusion trigger`)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.lag = Gauge(
            "fusion_trigger_consumer_lag",
            "records on the requests topic not yet consumed, per partition",
            ["topic", "partition"],
            registry=r,
        )
        self.deadletters = Counter(
            "fusion_trigger_deadletters", "requests dead-lettered, by reason", ["reason"], registry=r
        )
        self.runs = Counter("fusion_trigger_runs_created", "flow runs created from requests", registry=r)
        self.api_errors = Counter(
            "fusion_trigger_prefect_api_errors", "failed attempts to create a run (retried)", registry=r
        )


def first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "event"
    return f"{where}: {err['msg']} ({len(exc.errors())} error(s))"


def parse_request(payload: bytes | None, configs_dir: Path, max_bytes: int = MAX_EVENT_BYTES) -> IngestRequested:
    """Bytes of a record -> a checked request, or InvalidRequest naming the field and the reason."""
    if not payload:
        raise InvalidRequest("empty payload", "empty")
    if len(payload) > max_bytes:
        raise InvalidRequest(f"payload of {len(payload)} bytes exceeds the limit of {max_bytes}", "too_large")
    try:
        body = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidRequest(f"not JSON: {exc}", "not_json") from exc
    if not isinstance(body, dict):
        raise InvalidRequest(f"a CloudEvent is a JSON object, got {type(body).__name__}", "not_object")
    try:
        event = IngestRequested.model_validate(body)
    except ValidationError as exc:
        raise InvalidRequest(first_error(exc), "schema") from exc
    config = configs_dir / f"{event.data.dataset}.yaml"
    if not config.is_file():
        raise InvalidRequest(f"data.dataset: no config {config.name} in {configs_dir}", "unknown_dataset")
    if event.data.params or event.data.uri:
        try:
            settings = with_overrides(load_settings(config), event.data.params, event.data.uri)
        except ValidationError as exc:
            raise InvalidRequest(f"data.params: {first_error(exc)}", "bad_params") from exc
        # what the run's first stage would refuse, refused here; source files are not looked for: the
        # run reads them on a worker, which need not be this machine
        problems = check_settings(settings, files=False)
        if problems:
            raise InvalidRequest(f"data.params: {'; '.join(p.line() for p in problems)}", "bad_params")
    return event


def deadletter_record(payload: bytes | None, reason: str, topic: str, partition: int, offset: int) -> bytes:
    return json.dumps(
        {
            "reason": reason,
            "source": {"topic": topic, "partition": partition, "offset": offset},
            "received_at": dt.datetime.now(dt.UTC).isoformat(),
            "original_base64": base64.b64encode(payload or b"").decode(),
        }
    ).encode()


class RunLauncher(Protocol):
    def launch(self, event: IngestRequested) -> str: ...


class PrefectDeploymentLauncher:
    """Creates a run of a Prefect deployment through the Prefect API (PREFECT_API_URL)."""

    def __init__(self, deployment: str, configs_dir: Path) -> None:
        self.deployment = deployment
        self.configs_dir = configs_dir
        self._deployment_id: Any = None
        self._client: Any = None

    def _api(self) -> Any:
        """One HTTP client kept open across requests (a new one per event costs a connection each time)."""
        if self._client is None:
            from prefect.client.orchestration import get_client

            self._client = get_client(sync_client=True)
            self._client.__enter__()
        return self._client

    def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            with contextlib.suppress(Exception):
                client.__exit__(None, None, None)

    def launch(self, event: IngestRequested) -> str:
        try:
            return self._launch(event)
        except Exception:
            self.close()  # the API may have gone away: reconnect on the next try
            raise

    def _launch(self, event: IngestRequested) -> str:
        client = self._api()
        if self._deployment_id is None:
            self._deployment_id = client.read_deployment_by_name(self.deployment).id
        # the run's parent: this launch's span (the request's own traceparent when tracing is off)
        trace = tracing.current_traceparent() or event.traceparent
        config = self.configs_dir / f"{event.data.dataset}.yaml"
        # Relative when possible: the worker resolves it in its own checkout of the project.
        with contextlib.suppress(ValueError):
            config = config.resolve().relative_to(Path.cwd())
        run = client.create_flow_run_from_deployment(
            self._deployment_id,
            parameters={
                "config": str(config),
                "traceparent": trace,
                "source_uri": event.data.uri,
                "overrides": event.data.params or None,
            },
            idempotency_key=event.id,
            tags=["fusion-trigger", f"event:{event.id}", *([f"trace:{trace.split('-')[1]}"] if trace else [])],
        )
        return str(run.id)


@dataclass
class TriggerStats:
    launched: int = 0
    deadlettered: int = 0
    retries: int = 0


class Trigger:
    """The consumer loop. `stop()` (or SIGTERM/SIGINT via `install_signal_handlers`) ends it cleanly."""

    def __init__(
        self,
        bootstrap_servers: str,
        events: EventsConfig,
        launcher: RunLauncher,
        configs_dir: Path,
        fetch_max_wait_ms: int = 20,
        max_backoff_s: float = 10.0,
        metrics: TriggerMetrics | None = None,
    ) -> None:
        from kafka import KafkaConsumer

        ensure_topics(bootstrap_servers, [events.requests_topic, events.deadletter_topic], events)
        self.events = events
        self.launcher = launcher
        self.configs_dir = configs_dir
        self.max_backoff_s = max_backoff_s
        self.stats = TriggerStats()
        self.metrics = metrics or TriggerMetrics()
        self._stop = threading.Event()
        self.consumer = KafkaConsumer(
            **events.security.client_options(),
            bootstrap_servers=bootstrap_servers,
            group_id=events.consumer_group,
            client_id="fusion-trigger",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            # kafka-python waits up to 500 ms for a fetch to fill by default: most of a request's latency.
            fetch_max_wait_ms=fetch_max_wait_ms,
            max_poll_records=50,
            metadata_max_age_ms=30_000,  # a partition added later is consumed within 30 s, not kafka-python's 5 min
        )
        # Subscribed only once this consumer's own metadata has the topic's partitions: the broker that
        # answered ensure_topics may know them before the one answering this consumer does, and a group
        # joined without them gets no partition until a later refresh and rebalance (a test waited 60 s)
        deadline = time.monotonic() + events.timeout_s
        while not self.consumer.partitions_for_topic(events.requests_topic):
            if time.monotonic() > deadline:
                self.consumer.close()
                raise ConnectionError(
                    f"Kafka at {bootstrap_servers}: {events.requests_topic} has no partitions in this"
                    f" consumer's metadata after {events.timeout_s} s"
                )
            time.sleep(0.1)
        self.consumer.subscribe([events.requests_topic])
        self.producer = durable_producer(bootstrap_servers, "fusion-trigger-deadletter", events)

    def stop(self) -> None:
        self._stop.set()

    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop())

    def run(self) -> TriggerStats:
        from kafka.errors import KafkaError
        from kafka.structs import TopicPartition

        try:
            while not self._stop.is_set():
                polled = self.consumer.poll(timeout_ms=200)
                self._measure_lag()
                for records in polled.values():
                    for record in records:
                        try:
                            if not self.handle(record):
                                return self.stats  # stopped while retrying: this record stays uncommitted
                        except KafkaError as exc:
                            # Broker gone mid-record (dead letter or commit failed): read this record
                            # again later. A run it already created is found again by its idempotency key.
                            self.stats.retries += 1
                            log.warning(
                                "broker error at %s/%s@%s (%r); retrying",
                                record.topic,
                                record.partition,
                                record.offset,
                                exc,
                            )
                            self.consumer.seek(TopicPartition(record.topic, record.partition), record.offset)
                            self._stop.wait(1.0)
                            break
        finally:
            close = getattr(self.launcher, "close", None)
            if close is not None:
                close()
            self.consumer.close(autocommit=False)
            self.producer.close(timeout=self.events.timeout_s)
        return self.stats

    def _measure_lag(self) -> None:
        """Per assigned partition: the broker's high watermark minus this consumer's position (what it
        knows from its last fetch; no extra request)."""
        for partition in self.consumer.assignment():
            highwater = self.consumer.highwater(partition)
            if highwater is None:
                continue
            with contextlib.suppress(Exception):  # a partition being revoked has no position
                position = self.consumer.position(partition, timeout_ms=0)
                if position is not None:
                    self.metrics.lag.labels(partition.topic, str(partition.partition)).set(max(highwater - position, 0))

    def handle(self, record: Any) -> bool:
        """Deal with one record and commit it; False if asked to stop before it was done."""
        from kafka.structs import OffsetAndMetadata, TopicPartition

        try:
            event = parse_request(record.value, self.configs_dir)
        except InvalidRequest as exc:
            reason = str(exc)
            with tracing.span(
                "trigger dead-letter", attributes={**where(record), "fusion.deadletter.reason": reason[:500]}
            ):
                self._deadletter(record, reason)
            self.metrics.deadletters.labels(exc.kind).inc()
        else:
            with (
                tracing.span(
                    f"trigger {event.type}",
                    event.traceparent,
                    {**where(record), "messaging.message.id": event.id, "fusion.dataset": event.data.dataset},
                    SpanKind.CONSUMER,
                ) as span,
                log_context(dataset=event.data.dataset),
            ):
                run_id = self._launch_with_backoff(event)
                if run_id is None:
                    return False
                span.set_attribute("fusion.run_id", run_id)
                self.stats.launched += 1
                self.metrics.runs.inc()
                log.info("event %s -> flow run %s", event.id, run_id, extra={"run_id": run_id})
        partition = TopicPartition(record.topic, record.partition)
        self.consumer.commit({partition: OffsetAndMetadata(record.offset + 1, "", -1)})
        return True

    def _deadletter(self, record: Any, reason: str) -> None:
        self.producer.send(
            self.events.deadletter_topic,
            key=record.key,
            value=deadletter_record(record.value, reason, record.topic, record.partition, record.offset),
            headers=[("fusion-deadletter-reason", reason[:500].encode()), ("content-type", b"application/json")],
        ).get(timeout=self.events.timeout_s)
        self.stats.deadlettered += 1
        log.warning("dead-lettered %s/%s@%s: %s", record.topic, record.partition, record.offset, reason)

    def _launch_with_backoff(self, event: IngestRequested) -> str | None:
        delay = 0.5
        while not self._stop.is_set():
            try:
                with tracing.span(
                    "create flow run", attributes={"fusion.deployment": getattr(self.launcher, "deployment", None)}
                ):
                    return self.launcher.launch(event)
            except Exception as exc:  # API down, timeouts, 5xx: the same event is tried again
                self.stats.retries += 1
                self.metrics.api_errors.inc()
                log.warning("cannot create the run for event %s (%s); retrying in %.1f s", event.id, exc, delay)
                self._stop.wait(delay)
                delay = min(delay * 2, self.max_backoff_s)
        return None


def where(record: Any) -> dict[str, Any]:
    """Span attributes of a Kafka record (OpenTelemetry's messaging conventions)."""
    return {
        "messaging.system": "kafka",
        "messaging.destination.name": record.topic,
        "messaging.destination.partition.id": str(record.partition),
        "messaging.kafka.offset": record.offset,
    }


def run_forever(trigger: Trigger) -> TriggerStats:
    trigger.install_signal_handlers()
    started = time.monotonic()
    stats = trigger.run()
    log.info("trigger stopped after %.0f s: %s", time.monotonic() - started, stats)
    return stats
