"""JSON log lines and trace context: the formatter's fields, printed lines as records, W3C traceparents in and out
of real OpenTelemetry SDK spans (kept in memory here; tests/services checks them in Jaeger)."""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from fusion.core import logs, tracing


def record(message: str = "hello %s", *args: object, **extra: object) -> logging.LogRecord:
    made = logging.LogRecord("fusion.test", logging.WARNING, __file__, 1, message, args or ("world",), None)
    for key, value in extra.items():
        setattr(made, key, value)
    return made


def test_a_line_is_one_json_object_with_the_fields_it_knows() -> None:
    formatter = logs.JsonFormatter()
    plain = json.loads(formatter.format(record()))
    assert set(plain) == {"timestamp", "level", "logger", "message"}
    assert (plain["level"], plain["logger"], plain["message"]) == ("WARNING", "fusion.test", "hello world")
    assert plain["timestamp"].endswith("+00:00")
    with logs.log_context(run_id="r1", dataset="flights", stage="ingest"):
        inside = json.loads(formatter.format(record(stage="train")))  # the record's own extra wins
    assert (inside["run_id"], inside["dataset"], inside["stage"]) == ("r1", "flights", "train")
    after = json.loads(formatter.format(record()))
    assert "run_id" not in after  # the context ends with its block


def test_prefect_run_records_carry_the_run_id_and_structured_fields_join_the_line() -> None:
    formatter = logs.JsonFormatter()
    line = json.loads(formatter.format(record(flow_run_id="abc-123", fields={"summary": {"rows": 3}, "level": "x"})))
    assert line["run_id"] == "abc-123"
    assert line["summary"] == {"rows": 3}
    assert line["level"] == "WARNING"  # a field never overwrites the line's own keys


def test_a_traceback_stays_inside_one_line() -> None:
    try:
        raise ValueError("broken\nacross lines")
    except ValueError:
        made = logging.LogRecord("fusion.test", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    text = logs.JsonFormatter().format(made)
    assert "\n" not in text
    assert "ValueError: broken\nacross lines" in json.loads(text)["exception"]


def test_the_format_is_json_or_text_and_anything_else_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(logs.FORMAT_ENV, "JSON")
    assert logs.log_format() == "json"
    assert logs.logging_environment()["PREFECT_LOGGING_SETTINGS_PATH"].endswith("prefect_logging.yml")
    monkeypatch.setenv(logs.FORMAT_ENV, "xml")
    with pytest.raises(ValueError, match="FUSION_LOG_FORMAT must be json or text, not 'xml'"):
        logs.log_format()
    monkeypatch.delenv(logs.FORMAT_ENV)
    assert logs.log_format() == "text"
    assert logs.logging_environment() == {}


def test_what_a_library_prints_becomes_log_records(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="mlflow"), logs.printed_to_log("mlflow"):
        print("Successfully registered model 'm'.")  # stdout
        sys.stderr.write("Created version '1' ")
        sys.stderr.write("of model 'm'.\n\n")
        sys.stderr.write("no newline at the end")
    assert [r.getMessage() for r in caplog.records if r.name == "mlflow"] == [
        "Successfully registered model 'm'.",
        "Created version '1' of model 'm'.",
        "no newline at the end",
    ]


def test_a_handler_writing_to_stderr_inside_the_block_does_not_loop() -> None:
    """MLflow's own handler writes to sys.stderr: its lines are written out once, not fed back as records."""
    out = io.StringIO()
    library = logging.getLogger("a.library.printing")
    library.propagate = False
    library.setLevel(logging.INFO)

    class ToCurrentStderr(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            sys.stderr.write(f"{record.getMessage()}\n")  # MLflow's stream forwards to sys.stderr of the moment

    library.addHandler(ToCurrentStderr())
    original = sys.stderr
    sys.stderr = out
    try:
        with logs.printed_to_log("a.library.printing"):
            library.warning("from the library's logger")
            print("printed by the library", file=sys.stderr)
    finally:
        sys.stderr = original
        library.handlers.clear()
    assert out.getvalue().splitlines() == ["from the library's logger", "printed by the library"]


def test_configure_logging_writes_json_and_keeps_libraries_at_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(logs.FORMAT_ENV, "json")
    stream = io.StringIO()
    root = logging.getLogger()
    before = (root.level, list(root.handlers), logging.getLogger("fusion").level)
    try:
        logs.configure_logging(stream=stream)
        logging.getLogger("fusion.trigger").info("kept")
        logging.getLogger("some.library").info("dropped")
        logging.getLogger("some.library").warning("kept too")
    finally:
        root.handlers[:] = before[1]
        root.setLevel(before[0])
        for name in logs.FUSION_LOGGERS:
            logging.getLogger(name).setLevel(before[2] if name == "fusion" else logging.NOTSET)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(x["logger"], x["message"]) for x in lines] == [("fusion.trigger", "kept"), ("some.library", "kept too")]


def test_the_image_logs_json_with_the_variables_fusion_derives_for_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pods run no Fusion entry point before Prefect's engine or Dask's worker starts: the image sets what
    `fusion.runtime.prepare_environment` would (paths as the image lays the code out, under /app)."""
    from pathlib import Path

    dockerfile = (Path(__file__).parents[2] / "infra" / "image" / "Dockerfile").read_text()
    monkeypatch.setenv(logs.FORMAT_ENV, "json")
    wanted = {logs.FORMAT_ENV: "json", **logs.logging_environment(), **tracing.tracing_environment()}
    for key, value in wanted.items():
        if key == "PREFECT_LOGGING_SETTINGS_PATH":
            value = "/app/" + str(logs.PREFECT_LOGGING_YAML.relative_to(Path(__file__).parents[2]))
        quoted = f"'{value}'" if "[" in value else value
        assert f"    {key}={quoted}" in dockerfile, key


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """A real SDK provider for Fusion's tracer, finished spans kept in memory."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    original = tracing.tracer
    tracing.tracer = lambda: provider.get_tracer(tracing.TRACER)  # type: ignore[assignment]
    try:
        yield exporter
    finally:
        tracing.tracer = original  # type: ignore[assignment]


def test_a_span_continues_the_trace_its_traceparent_names(spans: InMemorySpanExporter) -> None:
    incoming = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    with tracing.span("trigger fusion.ingest.requested", incoming) as outer:
        outer_parent = tracing.traceparent_of(outer)
        with tracing.span("create flow run"), logs.log_context(dataset="d"):
            line = json.loads(logs.JsonFormatter().format(record()))
            inner = tracing.current_traceparent()
    assert outer_parent is not None and inner is not None
    assert outer_parent.split("-")[1] == inner.split("-")[1] == "0af7651916cd43dd8448eb211c80319c"
    # the log line names the current span
    assert line["trace_id"] == "0af7651916cd43dd8448eb211c80319c"
    assert line["span_id"] == inner.split("-")[2]
    finished = {s.name: s for s in spans.get_finished_spans()}
    assert finished["trigger fusion.ingest.requested"].parent.span_id == int("b7ad6b7169203331", 16)
    assert finished["create flow run"].parent.span_id == finished["trigger fusion.ingest.requested"].context.span_id


def test_a_failure_inside_a_span_is_recorded_on_it(spans: InMemorySpanExporter) -> None:
    with pytest.raises(RuntimeError), tracing.span("stage train"):
        raise RuntimeError("no rows")
    (failed,) = spans.get_finished_spans()
    assert not failed.status.is_ok
    assert failed.events[0].name == "exception"
    assert failed.events[0].attributes["exception.message"] == "no rows"


def test_invalid_traceparents_start_a_new_trace(spans: InMemorySpanExporter) -> None:
    assert tracing.context_from(None) is None
    with tracing.span("run", "00-not-a-trace-01") as current:
        assert current.get_span_context().is_valid
    (made,) = spans.get_finished_spans()
    assert made.parent is None
