"""Process environment for the libraries Fusion drives, derived from settings at the entry point."""

from __future__ import annotations

import atexit
import hashlib
import importlib
import importlib.metadata
import os
import shutil
import sqlite3
import subprocess  # nosec B404  # Prefect's server command, argv list, no shell
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fusion.core.logs import logging_environment
from fusion.core.net import free_port
from fusion.core.settings import DaskConfig, Settings
from fusion.core.tracing import tracing_environment


def prepare_environment(settings: Settings, verbose: bool = False) -> None:
    """Point Prefect, MLflow and GX at FUSION_HOME and keep them offline and quiet.

    Uses setdefault: a variable the user exported wins. Call before importing prefect.
    """
    home = settings.resolved_home
    home.mkdir(parents=True, exist_ok=True)
    defaults = {
        "PREFECT_HOME": str(home / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        # The embedded API server can take over 20 s to start on 2 busy cores.
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
        "PREFECT_LOGGING_LEVEL": "INFO" if verbose else "WARNING",
        # The CLI prints its own progress and a one-line error; run logs still reach the Prefect API.
        "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "INFO" if verbose else "CRITICAL",
        "PREFECT_LOGGING_TO_API_BATCH_INTERVAL": "0.5",
        "DASK_LOGGING__DISTRIBUTED": "info" if verbose else "warning",
        # Dask's statistical profiler walks every thread's stack each 10 ms, holding the GIL, for the
        # dashboard's Profile page: ~1 s of a run's CPU, taken from the stages (docs/BENCHMARKS.md)
        "DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED": "false",
        "MLFLOW_LOGGING_LEVEL": "INFO" if verbose else "ERROR",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        "GX_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "TQDM_DISABLE": "1",
    }
    # FUSION_LOG_FORMAT=json: Prefect's loggers and each Dask worker's in the same JSON lines
    defaults |= logging_environment() | tracing_environment()
    for key, value in defaults.items():
        os.environ.setdefault(key, value)


def start_embedded_prefect_api() -> EmbeddedPrefectApi | None:
    """With no PREFECT_API_URL, start Prefect's embedded API server in its own process now.

    Prefect would start it on the flow's first API call, after the flow's imports; started first,
    its boot runs on another core beside them. Its URL is exported as PREFECT_API_URL at once, so
    Prefect (imported later) and Dask worker processes use this one server instead of each booting an
    embedded API of its own. Call `wait()` on the result before the first API call.
    """
    if os.environ.get("PREFECT_API_URL"):
        return None
    api = EmbeddedPrefectApi()
    api.start()
    return api


def start_local_cluster(settings: Settings) -> EarlyCluster | None:
    """With a LocalCluster of worker processes to come (`pipeline.dask.processes`, no Dask address), start
    it now, beside this process's imports and the embedded API's boot, and return it; None otherwise.

    A worker process imports the stages' code as it starts (~4 s of CPU): started by the flow, that came
    after the run's imports and before its first stage. Pass `address()` to the run as its Dask address,
    and `close()` the cluster after. Call after `start_embedded_prefect_api`: the workers inherit its URL."""
    if not _runs_own_local_cluster(settings) or not settings.pipeline.dask.processes:
        return None
    return EarlyCluster(settings.pipeline.dask)


def stages_in_this_process(settings: Settings) -> bool:
    """Whether the flow's stages run in the run's own process (a LocalCluster of threads)."""
    return _runs_own_local_cluster(settings) and not settings.pipeline.dask.processes


def _runs_own_local_cluster(settings: Settings) -> bool:
    """Whether the run starts a LocalCluster itself: no Dask address, `pipeline.dask.cluster` local."""
    return not settings.dask_address and settings.pipeline.dask.cluster == "local"


def import_while(waiting: Callable[[], bool], modules: list[str]) -> list[str]:
    """Import these modules one after another in this thread while `waiting()` holds; return those imported.

    For a wait the run cannot shorten, such as the embedded API's boot after the run's own imports: the
    stages' slow imports (`tasks.deferred`) made then are not made later, on a stage's path. The import
    under way when the wait ends runs to its end, and that stage saves the same time, so the run gains
    the time it would have spent waiting. A module that fails to import is left to its stage, which
    raises its own error."""
    imported = []
    for name in modules:
        if not waiting():
            break
        try:
            importlib.import_module(name)
        except Exception:  # nosec B112  # the stage that needs it imports it again and reports the error
            continue
        imported.append(name)
    return imported


class EarlyCluster:
    """A `distributed.LocalCluster` started in a thread of its own; its worker processes run in parallel."""

    def __init__(self, config: DaskConfig) -> None:
        self.cluster: Any = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._start, args=(config,), name="fusion-local-cluster", daemon=True)
        self._thread.start()

    def _start(self, config: DaskConfig) -> None:
        try:
            from distributed import LocalCluster

            from tasks.local_cluster import local_cluster_kwargs

            self.cluster = LocalCluster(**local_cluster_kwargs(config))
        except Exception as exc:  # raised where the run asks for the address
            self._error = exc

    def address(self) -> str:
        """The scheduler's address, once the cluster is up; the cluster's own error if it could not start."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        return str(self.cluster.scheduler_address)

    def close(self) -> None:
        self._thread.join()
        if self.cluster is not None:
            self.cluster.close()


@contextmanager
def embedded_run_settings() -> Iterator[None]:
    """Prefect's settings for a flow run on this process's own embedded API: no flow-run heartbeats.

    A heartbeat lets a server tell that a run's process died. The embedded server dies with that process,
    so nothing reads them, and the heartbeat thread, which sleeps in 1 s steps, is joined at the end of
    the run: up to 1 s of every `fusion run` (docs/BENCHMARKS.md, "Cold start: where the time goes")."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield


def embedded_prefect_api_url() -> str:
    """The URL of this process's embedded Prefect API, started by Prefect's own launcher (once per process).

    For a process that has imported Prefect already (a test, a notebook): Prefect fixed its settings at
    import, with no API URL, so its client uses the embedded server of Prefect's launcher, and this is
    that same server. Before Prefect is imported, `start_embedded_prefect_api` starts faster."""
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()
    server.start(timeout=int(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")))
    return str(server.api_url)


# Prefect's own launcher's options (SubprocessASGIServer), the port last
UVICORN = ["--host", "127.0.0.1", "--log-level", "error", "--lifespan", "on", "--port"]


class EmbeddedPrefectApi:
    """Prefect's embedded API server (the one Prefect starts when no API URL is set), started by Fusion.

    The same server as Prefect's own `SubprocessASGIServer`: uvicorn on `create_app` with the variables
    Prefect sets for an ephemeral server, on loopback, stopped when this process exits. Two things
    differ, both for start-up time:
    - nothing of the server is imported into this process (Prefect's launcher imports the whole server
      app, seconds of this process's CPU, for a server that runs in another process);
    - a fresh PREFECT_HOME's SQLite database starts as a copy of the installed template
      (`prefect_template_path`, made by `make setup`: `python -m fusion.runtime templates`), so the
      server skips migrations and block registration. Without a template, or with a database URL of the
      user's own, Prefect migrates as usual. Figures: docs/BENCHMARKS.md, "Cold start: where the time goes".
    """

    def __init__(self) -> None:
        self.process: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.seeded = False
        self._log: Path | None = None

    def start(self) -> None:
        home = Path(os.environ.get("PREFECT_HOME", Path.home() / ".prefect")).expanduser()
        home.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}
        # The server's console is its log file: its warnings and errors reach it even where the CLI has
        # quieted Prefect's console for the run's own process (prepare_environment).
        env |= {"PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "WARNING", "PREFECT_LOGGING_LEVEL": "WARNING"}
        self.seeded = seed_prefect_database(home)
        if self.seeded:  # the template's block types are registered: the server need not write them again
            env["PREFECT_API_BLOCKS_REGISTER_ON_START"] = "false"
        port = free_port()
        self._log = home / "embedded-api.log"
        with self._log.open("ab") as log:
            self.process = subprocess.Popen(  # nosec B603  # this interpreter, fixed arguments, a free port
                [
                    sys.executable,
                    "-m",
                    "uvicorn",
                    "--factory",
                    "prefect.server.api.server:create_app",
                    *UVICORN,
                    str(port),
                ],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        self.url = f"http://127.0.0.1:{port}/api"
        # Exported now, before anything imports Prefect: Prefect reads its settings once, at import, and
        # with no URL would start an embedded server of its own. `wait()` before the first API call.
        os.environ["PREFECT_API_URL"] = self.url
        atexit.register(self.stop)

    def wait(self, timeout: float | None = None) -> str:
        """Block until the server answers /health; return its URL."""
        if self.process is None:
            raise RuntimeError("the embedded Prefect API was not started")
        limit = timeout or float(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120"))
        deadline = time.monotonic() + limit
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"Prefect's embedded API server exited with code {self.process.returncode} while starting;"
                    f" its log is {self._log}\nthe log's last lines:\n{self._log_tail()}"
                )
            if self._answers(timeout=2):
                break
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"Prefect's embedded API server did not answer {self.url}/health within {limit:.0f} s"
                    f" (PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS); its log is {self._log}"
                    f"\nthe log's last lines:\n{self._log_tail()}"
                )
            time.sleep(0.1)
        return self.url

    def booting(self) -> bool:
        """True while the server's process runs and does not answer /health yet (one quick check)."""
        return self.process is not None and self.process.poll() is None and not self._answers(timeout=0.5)

    def _answers(self, timeout: float) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=timeout) as response:  # nosec B310  # http://127.0.0.1
                return bool(response.status == 200)
        except OSError:
            return False

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def _log_tail(self) -> str:
        if self._log is None or not self._log.exists():
            return ""
        return self._log.read_text(errors="replace")[-3000:]


def prefect_template_path() -> Path:
    """Where the migrated Prefect database for the installed Prefect (and its collections) lives."""
    key = hashlib.sha256()
    for dist in sorted(
        (d.metadata["Name"].lower(), d.version)
        for d in importlib.metadata.distributions()
        if (d.metadata["Name"] or "").lower().startswith("prefect")
    ):
        key.update(f"{dist[0]}=={dist[1]};".encode())
    version = importlib.metadata.version("prefect")
    return Path(sys.prefix) / "share" / "fusion" / f"prefect-{version}-{key.hexdigest()[:12]}.db"


def seed_prefect_database(home: Path) -> bool:
    """Copy the template into a PREFECT_HOME that has no database yet; True when it did.

    Only for Prefect's default database (SQLite in PREFECT_HOME): a database URL the user set is left alone.
    """
    if any(os.environ.get(f"PREFECT_{k}_DATABASE_CONNECTION_URL") for k in ("API", "SERVER")):
        return False
    database = home / "prefect.db"
    if database.exists():  # before the template's path, which reads every installed distribution's metadata
        return False
    template = prefect_template_path()
    if not template.is_file():
        return False
    home.mkdir(parents=True, exist_ok=True)
    partial = database.with_name(f".prefect.db.{os.getpid()}")
    shutil.copyfile(template, partial)
    try:
        os.link(partial, database)  # fails if another process created the database meanwhile: keep theirs
    except FileExistsError:
        return False
    finally:
        partial.unlink()
    return True


def make_prefect_template() -> Path:
    """Migrate a database in a scratch PREFECT_HOME through a real embedded server and keep a copy as the
    template (what `make setup` runs; idempotent)."""
    target = prefect_template_path()
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    saved = dict(os.environ)
    with tempfile.TemporaryDirectory(prefix="fusion-prefect-template-") as scratch:
        # Prefect's defaults alone: a database URL or API URL of the user's must not be migrated or used
        for key in [k for k in os.environ if k.startswith("PREFECT_")]:
            del os.environ[key]
        os.environ |= {"PREFECT_HOME": scratch, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
        api = EmbeddedPrefectApi()
        try:
            api.start()
            api.wait(timeout=300)  # healthy: migrated, block types registered
        finally:
            api.stop()
            os.environ.clear()
            os.environ.update(saved)
        partial = target.with_name(f".{target.name}.{os.getpid()}")
        # the backup API folds the write-ahead log into one self-contained file
        with sqlite3.connect(Path(scratch) / "prefect.db") as source, sqlite3.connect(partial) as copy:
            source.backup(copy)
        source.close()
        copy.close()
        os.replace(partial, target)
    return target


def make_templates() -> list[Path]:
    """The migrated databases a fresh FUSION_HOME starts from: Prefect's embedded API's and the local
    MLflow registry's (tasks/registry_store.py)."""
    from tasks.registry_store import make_registry_template

    return [make_prefect_template(), make_registry_template()]


if __name__ == "__main__":
    if sys.argv[1:] != ["templates"]:
        sys.exit("usage: python -m fusion.runtime templates")
    print(*make_templates(), sep="\n")
