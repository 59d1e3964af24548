"""A replica's log file on a real Ray Serve: Fusion's records and its access lines there, in JSON, with
the caller's trace id; and off means off."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.serving.conftest import Served
from tests.serving.test_serving import MODEL

pytestmark = [pytest.mark.integration, pytest.mark.services]
CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


def replica_lines(folder: Path) -> list[str]:
    return [line for path in sorted(folder.glob("replica_*.log")) for line in path.read_text().splitlines()]


def wait_for(folder: Path, found: Any, timeout_s: float = 20) -> list[dict[str, Any]]:
    """The replica files' lines (parsed: each must be a JSON object) once one satisfies `found`."""
    deadline = time.monotonic() + timeout_s
    while True:
        lines = [json.loads(line) for line in replica_lines(folder)]
        if any(found(line) for line in lines) or time.monotonic() > deadline:
            return lines
        time.sleep(0.2)


def test_a_replica_logs_fusion_json_with_an_access_line_per_request(
    served: Served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ray import serve

    from fusion.core.settings import with_overrides
    from serving.app import build_app, serving_args

    monkeypatch.setenv("FUSION_LOG_FORMAT", "json")  # the app is built in JSON: its replicas log in it
    settings_ = with_overrides(served.settings, {"serving": {"replicas": 1, "access_log": True}})
    args = serving_args(settings_).model_copy(update={"logs_dir": str(tmp_path)})
    serve.run(build_app(args), name="fusion-logged", route_prefix="/logged")
    try:
        headers = {"x-request-id": "access-1", "traceparent": f"00-{CALLER_TRACE}-00f067aa0ba902b7-01"}
        records = [{"carrier": "UA", "origin": "EWR", "dest": "ORD", "distance": 719.0, "dep_delay": 3.0}]
        answer = httpx.post(f"{served.url}/logged/v1/predict", json={"records": records}, headers=headers, timeout=30)
        assert answer.status_code == 200, answer.text
        refused = httpx.post(f"{served.url}/logged/v1/predict", json={"records": []}, timeout=30)
        assert refused.status_code == 422

        lines = wait_for(tmp_path, lambda line: line.get("status") == 422)
    finally:
        serve.delete("fusion-logged")
    assert lines and all({"timestamp", "level", "logger", "message"} <= line.keys() for line in lines)
    # the version load, an INFO record of Fusion's that a replica used to lose, with Serve's replica field
    loaded = [line for line in lines if line["message"].startswith(f"serving {MODEL} version")]
    assert loaded and loaded[0]["logger"] == "fusion.serving" and "ModelServer" in loaded[0]["deployment"]
    access = [line for line in lines if line["logger"] == "fusion.serving.access"]
    assert [(a["method"], a["route"], a["status"]) for a in access] == [
        ("POST", "/v1/predict", 200),
        ("POST", "/v1/predict", 422),
    ]
    assert access[0]["request_id"] == "access-1" and access[0]["trace_id"] == CALLER_TRACE
    assert access[0]["path"].endswith("/v1/predict") and access[0]["latency_ms"] > 0


def test_the_served_app_writes_its_replica_files_under_its_home_and_no_access_line(served: Served) -> None:
    """The session's app: text logs (the default), access log off (the default)."""
    folder = served.settings.home / "logs" / "serve"
    assert httpx.get(f"{served.url}/healthz", timeout=30).status_code == 200
    lines = replica_lines(folder)
    assert len(list(folder.glob("replica_*.log"))) >= 2  # a file per replica, in the folder serving_args names
    assert any(f"serving {MODEL} version" in line for line in lines)
    assert not [line for line in lines if "fusion.serving.access" in line or "/healthz" in line]
