"""Process environment for the libraries Fusion drives, derived from settings at the entry point."""

from __future__ import annotations

import os
import threading

from fusion.core.logs import logging_environment
from fusion.core.settings import Settings
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


def start_embedded_prefect_api() -> threading.Thread | None:
    """With no PREFECT_API_URL, boot Prefect's embedded API server in the background.

    Prefect would start it on the flow's first API call; starting it now lets its ~20 s boot
    overlap the ~10 s of imports that come before the flow. Join the thread before running.
    Its URL is then exported as PREFECT_API_URL, so Dask worker processes started afterwards
    use this one server instead of each booting an embedded API of its own.
    """
    if os.environ.get("PREFECT_API_URL"):
        return None

    def boot() -> None:
        os.environ["PREFECT_API_URL"] = embedded_prefect_api_url()

    thread = threading.Thread(target=boot, name="prefect-embedded-api", daemon=True)
    thread.start()
    return thread


def embedded_prefect_api_url() -> str:
    """Start (once per process) Prefect's embedded API server and return its URL."""
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()
    server.start(timeout=int(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")))
    return str(server.api_url)
