"""`fusion status`: one screen for a data engineer, with or without services running.

Recent runs come from the lake's run ledger (each run writes its summary there, tasks/pipeline_run.py),
so they are listed whether runs were started by `fusion run`, a deployment or `fusion trigger`; the
champion of each model from the MLflow registry; serving from its Open Inference Protocol endpoints;
local services from infra/local/services.sh. A part that cannot be reached says so, and the rest is
still shown.
"""

from __future__ import annotations

import re
import subprocess  # nosec B404  # one fixed command of this repository's, argv list, no shell
from pathlib import Path
from typing import Any

from fusion.core.lake import Lake
from fusion.core.settings import Settings
from fusion.core.summary import RUNS, RunSummary

SERVICES_SCRIPT = Path(__file__).resolve().parent.parent / "infra" / "local" / "services.sh"
_SERVICE_LINE = re.compile(r"^(?P<name>[\w-]+): (?P<state>running|stopped)(?: \(pid (?P<pid>\d+)\))?\s*(?P<url>\S*)")


def recent_runs(lake: Lake, limit: int = 10) -> list[RunSummary]:
    """The latest runs of every dataset in the lake's ledger, newest first."""
    paths = [path for dataset in lake.folders(*RUNS) for path in lake.files(*RUNS, dataset)]
    newest = sorted(paths, key=lambda p: p.rsplit("/", 1)[-1], reverse=True)[:limit]
    return [RunSummary.model_validate_json(lake.read_bytes(p)) for p in newest]


def stage_outcomes(summary: RunSummary) -> list[dict[str, Any]]:
    """Each stage of a run: done (cached or not), or the one that failed."""
    outcomes: list[dict[str, Any]] = [
        {"stage": s.stage, "outcome": "cached" if s.cached else "done", "seconds": s.seconds} for s in summary.stages
    ]
    if summary.failed_stage:
        outcomes.append({"stage": summary.failed_stage, "outcome": "failed", "seconds": None})
    return outcomes


def champions(tracking_uri: str, models: list[str]) -> dict[str, Any]:
    """Each model's champion version with the test AUC it was registered with; an error names why not."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    local = Path(tracking_uri.removeprefix("sqlite:///")) if tracking_uri.startswith("sqlite:///") else None
    if local is not None and not local.is_file():  # opening it would create an empty registry
        return {name: {"version": None, "error": f"no registry yet at {local}"} for name in models}
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    found: dict[str, Any] = {}
    for name in models:
        try:
            version = client.get_model_version_by_alias(name, "champion")
        except MlflowException as exc:
            found[name] = {"version": None, "error": str(exc).splitlines()[0]}
            continue
        except Exception as exc:  # registry unreachable
            found[name] = {"version": None, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0]}"}
            continue
        auc = version.tags.get("fusion.test_auc")
        found[name] = {
            "version": str(version.version),
            "test_auc": float(auc) if auc else None,
            "batch_id": version.tags.get("fusion.batch_id"),
            "run_id": version.run_id,
        }
    return found


def serving_status(host: str, port: int, model: str, timeout_s: float = 1.0) -> dict[str, Any]:
    """Whether the serving endpoint answers, and which version of `model` it serves."""
    import httpx

    base = f"http://{host}:{port}"
    try:
        ready = httpx.get(f"{base}/v2/health/ready", timeout=timeout_s)
    except httpx.HTTPError as exc:
        return {"url": base, "up": False, "ready": False, "error": f"{type(exc).__name__}"}
    status: dict[str, Any] = {"url": base, "up": True, "ready": ready.status_code == 200, "model": model}
    if status["ready"]:
        try:
            metadata = httpx.get(f"{base}/v2/models/{model}", timeout=timeout_s)
            status["version"] = metadata.json()["versions"][0] if metadata.status_code == 200 else None
        except (httpx.HTTPError, ValueError, KeyError, IndexError):
            status["version"] = None
    return status


def local_services(script: Path = SERVICES_SCRIPT) -> dict[str, Any]:
    """The local services of `make up` and whether each is running (infra/local/services.sh status)."""
    if not script.is_file():
        return {}
    try:
        status = [str(script), "status"]  # this checkout's infra/local/services.sh, no user input
        done = subprocess.run(status, capture_output=True, text=True, timeout=15, check=False)  # nosec B603
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"error": str(exc)}
    services: dict[str, Any] = {}
    for line in (done.stdout + done.stderr).splitlines():
        match = _SERVICE_LINE.match(line.strip())
        if match:
            services[match["name"]] = {"running": match["state"] == "running", "url": match["url"] or None}
    return services


def collect(settings: Settings, limit: int = 10) -> dict[str, Any]:
    """Everything `fusion status` shows, as plain data (`--json`)."""
    runs = recent_runs(Lake(settings.resolved_lake_uri), limit)
    models = sorted({r.model_name for r in runs if r.model_name} | {settings.dataset.model.registered_name})
    serving = settings.serving
    return {
        "home": str(settings.resolved_home),
        "runs": [
            {
                "run_id": r.run_id,
                "dataset": r.dataset,
                "finished_at": r.finished_at,
                "batch_id": r.batch_id,
                "ok": r.error is None,
                "error": r.error,
                "stages": stage_outcomes(r),
                "test_auc": r.metrics.test_auc,
                "baseline_auc": r.metrics.baseline_auc,
                "model": f"{r.model_name} v{r.model_version}" if r.model_name else None,
                "promoted": r.promoted,
                "duration_s": r.duration_s,
            }
            for r in runs
        ],
        "champions": champions(settings.resolved_mlflow_uri, models),
        "serving": serving_status(serving.host, serving.port, settings.dataset.model.registered_name),
        "services": local_services(),
    }
