"""A replica's logs in Fusion's format, in its log file, and those files followed onto a stream.

A Serve replica is a Ray worker process. Serve sets up its `ray.serve` logger there, before the
deployment's constructor runs: one handler writing `replica_<app>_<deployment>_<id>.log` in Serve's
logs folder (a MemoryHandler in front of a RotatingFileHandler), `propagate` off. The root logger has
no handler, so without more a replica's `fusion.*` INFO records (a version loaded, Redis state
restored) are lost and its warnings reach the file as printed text.

`install_replica_logging()`, first thing in the replica's constructor:
- sends every record that reaches the root logger (Fusion's, MLflow's, Python's warnings) into Serve's
  handlers, with Fusion's loggers at INFO: the replica's file holds them all;
- with FUSION_LOG_FORMAT=json writes that file with Fusion's JsonFormatter, plus Serve's request
  fields when a record has them (`request_id`, `route`, `application`, `deployment`, `replica`). A
  filter on `ray.serve` stamps each record's trace and span ids when it is logged (Serve may buffer
  records and format them later) and sets the formatter again on handlers Serve rebuilt (it does when a
  deployment's logging config changes).

`follow(folder, out)` copies the replica files' new lines to `out`: `fusion serve` runs it on its
stderr, so a terminal or a pod's log has its replicas' lines; on a RayService a sidecar runs
`python -m serving.logs <folder>` (infra/terraform/modules/serving).
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import IO

from fusion.core.logs import FUSION_LOGGERS, JsonFormatter, log_format, stamp

SERVE_LOGGER = "ray.serve"
# what Serve's filters put on a replica's records (with its JSON encoding: serving/app.py serve_logging)
SERVE_FIELDS = ("request_id", "route", "application", "deployment", "replica")
REPLICA_FILES = "replica_*.log"


class _ToServe(logging.Handler):
    """A root handler: records that propagate to the root go through Serve's handlers (its file)."""

    def emit(self, record: logging.LogRecord) -> None:
        logging.getLogger(SERVE_LOGGER).handle(record)  # Logger.handle: its filters, then its handlers


class _FusionFormat(logging.Filter):
    """On `ray.serve`: the record's trace and context ids stamped now; Fusion's formatter on every
    handler Serve has (a logger filter survives Serve replacing its handlers)."""

    def __init__(self, formatter: logging.Formatter) -> None:
        super().__init__()
        self.formatter = formatter

    def filter(self, record: logging.LogRecord) -> bool:
        stamp(record)
        for handler in logging.getLogger(SERVE_LOGGER).handlers:
            target = handler.target if isinstance(handler, logging.handlers.MemoryHandler) else handler
            if target is not None and target.formatter is not self.formatter:
                target.setFormatter(self.formatter)
        return True


def install_replica_logging() -> None:
    """In a replica (after Serve configured its logger): Fusion's and the libraries' records in the
    replica's log file, in Fusion's format when FUSION_LOG_FORMAT=json. Idempotent."""
    serve_logger = logging.getLogger(SERVE_LOGGER)
    root = logging.getLogger()
    if not any(isinstance(h, _ToServe) for h in root.handlers):
        root.addHandler(_ToServe())
    for name in FUSION_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO)
    if log_format() == "json" and not any(isinstance(f, _FusionFormat) for f in serve_logger.filters):
        json_format = _FusionFormat(JsonFormatter(attributes=SERVE_FIELDS))
        serve_logger.addFilter(json_format)
        json_format.filter(logging.makeLogRecord({}))  # the formatter on the handlers now, not at the first record


def uninstall_replica_logging() -> None:
    """Undo install_replica_logging (tests that run it in their own process)."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _ToServe)]:
        root.removeHandler(handler)
    serve_logger = logging.getLogger(SERVE_LOGGER)
    for found in [f for f in serve_logger.filters if isinstance(f, _FusionFormat)]:
        serve_logger.removeFilter(found)


class _Followed:
    """One file being read: its handle (None while parked), where reading stopped, what was read of a
    line not yet ended."""

    def __init__(self, path: Path, offset: int | None) -> None:
        """offset None: from the file's end."""
        self.path, self.partial, self.offset = path, b"", 0
        self.handle: IO[bytes] | None = path.open("rb")
        self.inode = os.fstat(self.handle.fileno()).st_ino
        self.handle.seek(0, os.SEEK_END) if offset is None else self.handle.seek(offset)
        self.active = time.monotonic()

    def lines(self) -> list[bytes]:
        data = self.handle.read() if self.handle else b""
        if not data:
            return []
        self.active = time.monotonic()
        *complete, self.partial = (self.partial + data).split(b"\n")
        return [line + b"\n" for line in complete if line.strip()]

    def rotated(self) -> bool:
        """The path names another file now (RotatingFileHandler renamed this one) or none."""
        try:
            return self.path.stat().st_ino != self.inode
        except FileNotFoundError:
            return True

    def park(self) -> None:
        if self.handle:
            self.offset = self.handle.tell()
            self.handle.close()
            self.handle = None

    def unpark_if_grown(self) -> bool:
        """Open again where it stopped when the same file has grown (False: still quiet, or replaced)."""
        try:
            found = self.path.stat()
        except FileNotFoundError:
            return False
        if found.st_ino != self.inode or found.st_size <= self.offset:
            return False
        self.handle = self.path.open("rb")
        self.handle.seek(self.offset)
        return True

    def close(self) -> None:
        self.park()


class Follower:
    """New lines of the replica log files in a folder, copied to a stream, whole lines only.

    Files there when it starts are read from their end (an earlier server's lines are not repeated),
    files that appear later from their start. A rotated file is read to its end before the new one is
    opened, so rotation loses no line. A file quiet for `idle_s` is closed (a replica that ended keeps
    no descriptor open) and opened again where it stopped when it grows."""

    def __init__(self, folder: Path, out: IO[str], pattern: str = REPLICA_FILES, idle_s: float = 300) -> None:
        self.folder, self.out, self.pattern, self.idle_s = folder, out, pattern, idle_s
        self.files: dict[Path, _Followed] = {}
        self.started = False

    def poll(self) -> int:
        """Copy what is new; returns the number of lines copied."""
        copied = 0
        now = time.monotonic()
        for path, followed in list(self.files.items()):
            if followed.handle is None and not followed.unpark_if_grown():
                if followed.rotated():
                    del self.files[path]  # replaced while parked: the new file is opened below
                continue
            copied += self._write(followed.lines())
            if followed.rotated():
                copied += self._write(followed.lines())  # what was written before the rename
                followed.close()
                del self.files[path]  # the file now at the path is new: opened below, from its start
            elif now - followed.active > self.idle_s:
                followed.park()
        for path in sorted(self.folder.glob(self.pattern)) if self.folder.is_dir() else []:
            if path in self.files:
                continue
            try:
                self.files[path] = _Followed(path, 0 if self.started else None)
            except FileNotFoundError:  # rotated away between the listing and the open
                continue
            copied += self._write(self.files[path].lines())
        self.started = True
        return copied

    def _write(self, lines: list[bytes]) -> int:
        if lines:
            self.out.write(b"".join(lines).decode(errors="replace"))  # one write: lines stay whole between threads
            self.out.flush()
        return len(lines)

    def close(self) -> None:
        for followed in self.files.values():
            followed.close()
        self.files.clear()


def follow(folder: Path, out: IO[str], stop: threading.Event, every_s: float = 0.5) -> None:
    """Copy the replica files' new lines to `out` until `stop` is set (then once more)."""
    follower = Follower(folder, out)
    try:
        follower.poll()  # at once: the files there now are the ones read from their end
        while not stop.wait(every_s):
            follower.poll()
        follower.poll()
    finally:
        follower.close()


def follow_in_thread(folder: Path, out: IO[str]) -> tuple[threading.Thread, threading.Event]:
    stop = threading.Event()
    thread = threading.Thread(target=follow, args=(folder, out, stop), name="replica-logs", daemon=True)
    thread.start()
    return thread, stop


def main(argv: list[str]) -> int:
    """`python -m serving.logs FOLDER`: a log sidecar beside Ray workers (the folder is their Serve logs
    folder, /tmp/ray/session_latest/logs/serve by default, on a volume the pods share)."""
    if len(argv) != 1:
        print("usage: python -m serving.logs FOLDER (a Ray node's Serve logs folder)", file=sys.stderr)
        return 2
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):  # a last copy, then exit
        signal.signal(sig, lambda *_: stop.set())
    follow(Path(argv[0]), sys.stdout, stop)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
