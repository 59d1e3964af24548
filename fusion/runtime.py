"""Process environment for the libraries Fusion drives, derived from settings at the entry point."""

from __future__ import annotations

import os

from fusion.settings import Settings


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
    for key, value in defaults.items():
        os.environ.setdefault(key, value)
