"""Logs of every Fusion process: text by default, one JSON object per line with FUSION_LOG_FORMAT=json.

A JSON line always has `timestamp` (UTC, ISO 8601), `level`, `logger` and `message`, and when known
`run_id`, `dataset`, `stage`, `trace_id` and `span_id`. They come, in this order, from the record's own
`extra`, from `log_context` (what a process knows about the work it is doing), from Prefect's run
loggers (`flow_run_id` is Fusion's run id) and from the current OpenTelemetry span. An exception is one
`exception` string, so a traceback never breaks the one-object-per-line contract.

Prefect's own loggers join through `PREFECT_LOGGING_YAML` (handed to Prefect as
PREFECT_LOGGING_SETTINGS_PATH by `fusion.runtime.prepare_environment`), which keeps Prefect's handlers
and levels but writes the console with this formatter.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import io
import logging
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import orjson

FORMAT_ENV = "FUSION_LOG_FORMAT"
CONTEXT_FIELDS = ("run_id", "dataset", "stage", "trace_id", "span_id")
PREFECT_LOGGING_YAML = Path(__file__).with_name("prefect_logging.yml")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_context: contextvars.ContextVar[dict[str, str]] = contextvars.ContextVar("fusion_log_context", default={})  # noqa: B039  # never mutated: replaced


def log_format() -> Literal["json", "text"]:
    """FUSION_LOG_FORMAT: `json` or `text` (default). Anything else is refused by name."""
    value = os.environ.get(FORMAT_ENV, "text").strip().lower() or "text"
    if value not in ("json", "text"):
        raise ValueError(f"{FORMAT_ENV} must be json or text, not {value!r}")
    return value  # type: ignore[return-value]


@contextlib.contextmanager
def log_context(**fields: str | None) -> Iterator[None]:
    """Fields every record logged inside the block carries (in this thread or task's context)."""
    token = _context.set({**_context.get(), **{k: str(v) for k, v in fields.items() if v is not None}})
    try:
        yield
    finally:
        _context.reset(token)


def current_context() -> dict[str, str]:
    return dict(_context.get())


def _span_ids() -> dict[str, str]:
    try:
        from opentelemetry import trace
    except ImportError:  # pragma: no cover - a dependency of Fusion
        return {}
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return {}
    return {"trace_id": f"{context.trace_id:032x}", "span_id": f"{context.span_id:016x}"}


def stamp(record: logging.LogRecord) -> None:
    """Put the context fields known now (log context, current span) on the record itself, for a handler
    that formats it later, elsewhere (a buffering one); the record's own values are kept."""
    for field, value in {**_span_ids(), **_context.get()}.items():
        if getattr(record, field, None) is None:
            setattr(record, field, value)


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line. `attributes`: record attributes written too when a
    record has them (set by another library's filters, such as Ray Serve's request id)."""

    # logging.config passes fmt, datefmt and style, which a JSON line has no use for
    def __init__(self, *args: Any, attributes: tuple[str, ...] = (), **kwargs: Any) -> None:
        super().__init__()
        self.attributes = attributes
        # where this formatter is installed, Python's warnings are log records too (`py.warnings`), not
        # free text on stderr between the JSON lines
        logging.captureWarnings(True)

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "timestamp": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        known = {**_span_ids(), **_prefect_fields(record), **_context.get()}
        for field in CONTEXT_FIELDS:
            value = getattr(record, field, None) or known.get(field)
            if value is not None:
                line[field] = str(value)
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):  # logger.info(..., extra={"fields": {...}}): structured detail
            line |= {k: v for k, v in fields.items() if k not in line}
        for name in self.attributes:
            value = getattr(record, name, None)
            if value is not None and name not in line:
                line[name] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(line, default=str).decode()


def _prefect_fields(record: logging.LogRecord) -> dict[str, str]:
    """Prefect's run loggers put the flow run id on each record: Fusion's run id."""
    run_id = getattr(record, "flow_run_id", None)
    return {"run_id": str(run_id)} if run_id else {}


FUSION_LOGGERS = ("fusion", "tasks", "flows", "serving")


def configure_logging(level: int = logging.INFO, stream: Any = None, quiet: tuple[str, ...] = ()) -> None:
    """The root logger of an entry point (`fusion run`, `fusion trigger`, `fusion serve`): one handler on
    stderr in the format FUSION_LOG_FORMAT chooses; Fusion's loggers from `level`, the libraries' from
    WARNING (as Prefect's config has them), `quiet` ones too."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format() == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_fusion", False)]:
        root.removeHandler(old)
    handler._fusion = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    for name in FUSION_LOGGERS:
        logging.getLogger(name).setLevel(level)
    for name in quiet:
        logging.getLogger(name).setLevel(logging.WARNING)


def logging_environment() -> dict[str, str]:
    """Variables that make the libraries' own logging JSON in this process's children too (a flow run's
    Dask workers, Prefect's engine): empty in text mode."""
    if log_format() != "json":
        return {}
    return {
        "PREFECT_LOGGING_SETTINGS_PATH": str(PREFECT_LOGGING_YAML),
        # each Dask worker process re-formats the handlers distributed installed (dask_setup below)
        "DASK_DISTRIBUTED__WORKER__PRELOAD": '["fusion.core.logs"]',
        # MLflow's loggers propagate to the root's JSON handler instead of a text handler of their own
        "MLFLOW_CONFIGURE_LOGGING": "false",
    }


class _LineLogger(io.TextIOBase):
    """A text stream whose lines become log records (for libraries that print)."""

    def __init__(self, logger: logging.Logger, level: int, fallback: Any) -> None:
        self.logger, self.level, self.fallback, self.pending = logger, level, fallback, ""
        self._inside = threading.local()

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if getattr(self._inside, "logging", False):
            # a handler of the record being logged writes to sys.stderr (MLflow's own does): that text goes
            # where it would have gone, instead of round again
            return int(self.fallback.write(text) or 0)
        *lines, self.pending = (self.pending + text).split("\n")
        self._inside.logging = True
        try:
            for line in lines:
                if line.strip():
                    self.logger.log(self.level, line.rstrip())
        finally:
            self._inside.logging = False
        return len(text)

    def flush(self) -> None:
        pending, self.pending = self.pending, ""
        if pending.strip():
            self.write(pending + "\n")


@contextlib.contextmanager
def printed_to_log(logger: str, level: int = logging.INFO) -> Iterator[None]:
    """What a library prints inside the block (MLflow's "Created version ..." on stderr, "View run ..." on
    stdout) becomes log records of `logger`, so the process's output stays one JSON object per line."""
    stream = _LineLogger(logging.getLogger(logger), level, sys.stderr)
    with contextlib.redirect_stderr(stream), contextlib.redirect_stdout(stream):  # type: ignore[type-var]
        try:
            yield
        finally:
            stream.flush()


def dask_setup(worker: Any) -> None:
    """Dask preload hook (distributed.worker.preload): a worker process's logs in Fusion's format."""
    json_everywhere()


def json_everywhere() -> None:
    """In JSON mode, every handler already installed (by Prefect, Ray, Dask) writes JSON too."""
    if log_format() != "json":
        return
    formatter = JsonFormatter()
    for logger in [logging.getLogger(), *map(logging.getLogger, list(logging.root.manager.loggerDict))]:
        for handler in getattr(logger, "handlers", []):
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                handler.setFormatter(formatter)


if __name__ == "__main__":  # infra/local/services.sh: the variables for a service it starts, one per line
    print(f"{FORMAT_ENV}={log_format()}")
    for key, value in logging_environment().items():
        print(f"{key}={value}")
