"""A replica's logging, without a Ray cluster: Serve's own `configure_component_logger` (what a replica
runs before the deployment's constructor) writing into a temporary folder, then Fusion's
install_replica_logging; and the follower that copies replica files onto a stream."""

from __future__ import annotations

import asyncio
import builtins
import io
import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from fusion.core.logs import log_context
from serving.logs import Follower, install_replica_logging, uninstall_replica_logging


@pytest.fixture
def replica_logger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Serve's replica logging set up in this process (JSON encoding, files in tmp_path), and every
    logger it and Fusion touch put back afterwards."""
    from ray.serve._private.common import ServeComponentType
    from ray.serve._private.logging_utils import configure_component_logger
    from ray.serve.schema import LoggingConfig

    monkeypatch.setenv("FUSION_LOG_FORMAT", "json")
    serve_logger, root = logging.getLogger("ray.serve"), logging.getLogger()
    saved = (list(serve_logger.handlers), list(serve_logger.filters), serve_logger.level, serve_logger.propagate)
    saved_root = list(root.handlers)
    levels = {name: logging.getLogger(name).level for name in ("fusion", "tasks", "flows", "serving")}
    streams = (builtins.print, sys.stdout, sys.stderr)

    def configure() -> None:  # also what a replica does again when its logging config changes
        configure_component_logger(
            component_type=ServeComponentType.REPLICA,
            component_name="fusion_ModelServer",
            component_id="r1",
            logging_config=LoggingConfig(encoding="JSON", log_level="WARNING", logs_dir=str(tmp_path)),
            max_bytes=10**6,
            backup_count=1,
        )

    configure()
    try:
        yield tmp_path
    finally:
        builtins.print, sys.stdout, sys.stderr = streams
        uninstall_replica_logging()
        for handler in serve_logger.handlers:
            handler.close()
        serve_logger.handlers[:], serve_logger.filters[:] = saved[0], saved[1]
        serve_logger.setLevel(saved[2])
        serve_logger.propagate = saved[3]
        root.handlers[:] = saved_root
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def lines(folder: Path) -> list[dict[str, object]]:
    for handler in logging.getLogger("ray.serve").handlers:
        handler.flush()
    return [json.loads(line) for line in (folder / "replica_fusion_ModelServer_r1.log").read_text().splitlines()]


def test_a_replica_writes_fusion_records_as_fusion_json_lines(replica_logger: Path) -> None:
    from opentelemetry.sdk.trace import TracerProvider

    install_replica_logging()
    install_replica_logging()  # a second call adds nothing
    log = logging.getLogger("fusion.serving")
    log.info("loaded version %s", 3)  # INFO: dropped before, the root had no handler in a replica
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("request") as span, log_context(dataset="flights"):
        log.warning("cache slow")
        trace_id = f"{span.get_span_context().trace_id:032x}"
    try:
        raise ValueError("bad row")
    except ValueError:
        log.exception("predict failed")
    logging.getLogger("ray.serve").warning("serve's own warning")
    logging.getLogger("a_library").warning("a library's warning")  # any logger that propagates to the root

    found = lines(replica_logger)
    assert [(line["logger"], line["message"]) for line in found[:4]] == [
        ("fusion.serving", "loaded version 3"),
        ("fusion.serving", "cache slow"),
        ("fusion.serving", "predict failed"),
        ("ray.serve", "serve's own warning"),
    ]
    assert all({"timestamp", "level", "logger", "message"} <= line.keys() for line in found)
    # Serve's component fields, from its filters, kept by Fusion's formatter
    assert all(line["deployment"] == "fusion_ModelServer" and line["replica"] == "r1" for line in found)
    assert found[1]["trace_id"] == trace_id and found[1]["dataset"] == "flights"
    assert "trace_id" not in found[0]
    assert "ValueError: bad row" in str(found[2]["exception"])
    assert (found[4]["logger"], found[4]["message"]) == ("a_library", "a library's warning")


def test_fusions_format_comes_back_after_serve_rebuilds_its_handlers(replica_logger: Path) -> None:
    from ray.serve._private.common import ServeComponentType
    from ray.serve._private.logging_utils import configure_component_logger
    from ray.serve.schema import LoggingConfig

    install_replica_logging()
    # what a replica does when the deployment's logging config changes: Serve's handlers anew
    configure_component_logger(
        component_type=ServeComponentType.REPLICA,
        component_name="fusion_ModelServer",
        component_id="r1",
        logging_config=LoggingConfig(encoding="JSON", log_level="INFO", logs_dir=str(replica_logger)),
        max_bytes=10**6,
        backup_count=1,
    )
    logging.getLogger("ray.serve").info("after the change")
    logging.getLogger("fusion.serving").info("fusion after the change")
    found = lines(replica_logger)
    assert [line["message"] for line in found] == ["after the change", "fusion after the change"]
    assert "job_id" not in found[0]  # Ray's JSON formatter would write Ray's core ids


def test_a_buffered_record_keeps_the_trace_it_was_logged_in(replica_logger: Path) -> None:
    from opentelemetry.sdk.trace import TracerProvider

    install_replica_logging()
    buffer = next(h for h in logging.getLogger("ray.serve").handlers if isinstance(h, logging.handlers.MemoryHandler))
    buffer.capacity = 10  # RAY_SERVE_THROUGHPUT_OPTIMIZED: records formatted when the buffer flushes
    with TracerProvider().get_tracer("test").start_as_current_span("request") as span:
        logging.getLogger("fusion.serving").warning("inside")
        trace_id = f"{span.get_span_context().trace_id:032x}"
    assert not (replica_logger / "replica_fusion_ModelServer_r1.log").read_text()  # still buffered
    found = lines(replica_logger)
    assert found[0]["message"] == "inside" and found[0]["trace_id"] == trace_id


def write(path: Path, text: str) -> None:
    with path.open("a") as f:
        f.write(text)


def test_the_follower_copies_new_whole_lines_of_new_and_rotated_files(tmp_path: Path) -> None:
    old = tmp_path / "replica_app_M_old.log"
    write(old, '{"n": "before the server"}\n')
    (tmp_path / "proxy_1.log").write_text("not a replica\n")
    out = io.StringIO()
    follower = Follower(tmp_path, out)
    assert follower.poll() == 0  # files there at the start: from their end

    write(old, '{"n": 1}\n{"n": 2, "half": ')
    new = tmp_path / "replica_app_M_new.log"
    write(new, '{"n": 3}\n')
    assert follower.poll() == 2
    write(old, "true}\n")
    # rotation as RotatingFileHandler does it: a line lands in the old file, it is renamed, a new one starts
    write(new, '{"n": 4}\n')
    new.rename(tmp_path / "replica_app_M_new.log.1")
    write(new, '{"n": 5}\n')
    follower.poll()
    assert [json.loads(line)["n"] for line in out.getvalue().splitlines()] == [1, 3, 2, 4, 5]
    follower.close()


def test_the_follower_closes_a_quiet_file_and_reads_on_where_it_left(tmp_path: Path) -> None:
    path = tmp_path / "replica_app_M_r.log"
    out = io.StringIO()
    follower = Follower(tmp_path, out, idle_s=0)
    follower.poll()
    write(path, "a\nb")
    follower.poll()  # reads a, holds b
    follower.poll()  # quiet: closed
    assert follower.files[path].handle is None
    follower.poll()  # still quiet: stays closed
    assert follower.files[path].handle is None
    write(path, "c\nd\n")
    follower.poll()
    assert out.getvalue().splitlines() == ["a", "bc", "d"]
    follower.close()


def get(app: Any, path: str, headers: dict[str, str] | None = None) -> int:
    """The status of a GET, in-process (httpx's ASGI transport; an app's exception becomes its 500)."""

    async def call() -> int:
        transport = httpx.ASGITransport(app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return (await client.get(path, headers=headers)).status_code

    return asyncio.run(call())


def test_the_access_line_names_the_request_and_an_unhandled_error_counts_as_500(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from fastapi import FastAPI

    from fusion.core.logs import JsonFormatter
    from serving.http import measure_requests
    from serving.metrics import ServingMetrics

    app, metrics = FastAPI(), ServingMetrics()
    measure_requests(app, metrics, access_log=True)

    @app.get("/items/{item}")
    async def item(item: int) -> dict[str, int]:
        if item == 0:
            raise RuntimeError("a bug")
        return {"item": item}

    caller = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    with caplog.at_level(logging.INFO, "fusion.serving.access"):
        assert get(app, "/items/7", {"x-request-id": "rq-1", "traceparent": caller}) == 200
        assert get(app, "/items/0") == 500
    ok, failed = (json.loads(JsonFormatter().format(r)) for r in caplog.records)
    assert ok["message"].startswith("GET /items/7 200 ")
    assert {k: ok[k] for k in ("method", "path", "route", "status", "request_id")} == {
        "method": "GET",
        "path": "/items/7",
        "route": "/items/{item}",
        "status": 200,
        "request_id": "rq-1",
    }
    assert ok["trace_id"] == "0af7651916cd43dd8448eb211c80319c" and ok["latency_ms"] >= 0
    # no traceparent: no trace id, or (a tracer provider set in this process) a trace of its own
    assert failed["status"] == 500 and failed.get("trace_id") != ok["trace_id"]
    assert metrics.requests.labels("/items/{item}", "500")._value.get() == 1


def test_no_access_line_when_it_is_off(caplog: pytest.LogCaptureFixture) -> None:
    from fastapi import FastAPI

    from serving.http import measure_requests
    from serving.metrics import ServingMetrics

    app, metrics = FastAPI(), ServingMetrics()
    measure_requests(app, metrics)
    app.get("/ok")(lambda: {"ok": True})
    with caplog.at_level(logging.INFO, "fusion.serving.access"):
        assert get(app, "/ok") == 200
    assert not [r for r in caplog.records if r.name == "fusion.serving.access"]
    assert metrics.requests.labels("/ok", "200")._value.get() == 1
