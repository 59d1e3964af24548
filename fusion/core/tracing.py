"""OpenTelemetry traces: a span per run, per stage, per trigger decision and per serving request.

Every Fusion process that starts spans calls `setup_tracing(service)` once. Spans always get real W3C
ids (they are what logs and CloudEvents carry), and they are exported over OTLP/HTTP only when the
standard `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set; the exporter
reads the other standard OTEL_* variables itself (headers, timeout, certificate). `OTEL_SDK_DISABLED=true`
turns the SDK off: spans are then no-ops and ids come from the incoming traceparent only.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

log = logging.getLogger(__name__)
TRACER = "fusion"
_propagator = TraceContextTextMapPropagator()
_provider: Any = None


def exporting() -> bool:
    return bool(os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def tracing_environment() -> dict[str, str]:
    """Variables for a process that runs flows: Prefect's own run spans off. Prefect parents every task's
    span on one span its flow run recorded when it started, whichever stage is running, so they would
    sit under the wrong stage; Fusion's stage spans time the same work where it is awaited."""
    return {"PREFECT_CLOUD_ENABLE_ORCHESTRATION_TELEMETRY": "false"}


def setup_tracing(service: str) -> None:
    """Once per process: the SDK's tracer provider, named by OTEL_SERVICE_NAME or `service`, exporting
    over OTLP/HTTP when an endpoint is configured. A provider set before (by the user) is kept."""
    global _provider
    if _provider is not None or os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider

    current = trace.get_tracer_provider()
    if isinstance(current, TracerProvider):
        _provider = current
        return
    provider = TracerProvider(resource=Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", service)}))
    if exporting():
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    _provider = provider


def flush(timeout_ms: int = 5000) -> None:
    """Export what is buffered now (a flow run's process may end right after)."""
    if _provider is not None and not _provider.force_flush(timeout_ms):
        log.warning("spans were not all exported within %d ms", timeout_ms)


def tracer() -> trace.Tracer:
    return trace.get_tracer(TRACER)


def context_from(traceparent: str | None) -> otel_context.Context | None:
    """The remote parent a W3C traceparent names (None for none or an invalid one)."""
    if not traceparent:
        return None
    return _propagator.extract({"traceparent": traceparent})


def traceparent_of(span: Span) -> str | None:
    """The W3C traceparent of a span (None when the SDK is off and the span has no ids)."""
    found = span.get_span_context()
    if not found.is_valid:
        return None
    return f"00-{found.trace_id:032x}-{found.span_id:016x}-{int(found.trace_flags):02x}"


def current_traceparent() -> str | None:
    return traceparent_of(trace.get_current_span())


@contextlib.contextmanager
def span(
    name: str,
    traceparent: str | None = None,
    attributes: dict[str, Any] | None = None,
    kind: SpanKind = SpanKind.INTERNAL,
) -> Iterator[Span]:
    """A current span; its parent is `traceparent` when given, else the current span. An exception that
    leaves the block is recorded and sets the span's status to error."""
    with tracer().start_as_current_span(
        name,
        context=context_from(traceparent),
        kind=kind,
        attributes={k: v for k, v in (attributes or {}).items() if v is not None},
        record_exception=True,
        set_status_on_exception=True,
    ) as current:
        yield current


def start_span(name: str, traceparent: str | None = None, attributes: dict[str, Any] | None = None) -> Span:
    """A span the caller ends (`end_span`), for lifetimes that are not one block."""
    return tracer().start_span(
        name,
        context=context_from(traceparent),
        attributes={k: v for k, v in (attributes or {}).items() if v is not None},
    )


def end_span(current: Span, error: BaseException | None = None) -> None:
    if error is not None:
        current.record_exception(error)
        current.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
    current.end()


if __name__ == "__main__":  # infra/local/services.sh: the variables for a service it starts, one per line
    for key, value in tracing_environment().items():
        print(f"{key}={value}")
