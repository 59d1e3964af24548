"""`fusion status` without anything running: an empty home, no registry, no server."""

from __future__ import annotations

import json
from pathlib import Path

from fusion.core.lake import Lake
from fusion.core.net import free_port
from fusion.core.summary import RUNS, RunSummary, StageReport
from fusion.status import champions, local_services, recent_runs, serving_status, stage_outcomes


def test_nothing_running_is_reported_not_raised_and_creates_nothing(tmp_path: Path) -> None:
    registry = tmp_path / "mlflow.db"
    assert champions(f"sqlite:///{registry}", ["m"]) == {
        "m": {"version": None, "error": f"no registry yet at {registry}"}
    }
    assert not registry.exists()
    down = serving_status("127.0.0.1", free_port(), "m")
    assert down["up"] is False and down["ready"] is False
    assert recent_runs(Lake(str(tmp_path / "lake"))) == []


def test_runs_come_newest_first_with_their_stage_outcomes(tmp_path: Path) -> None:
    lake = Lake(str(tmp_path / "lake"))
    ok = RunSummary(run_id="a", dataset="d1", stages=[StageReport(stage="ingest", seconds=1.0, cached=True)])
    bad = RunSummary(run_id="b", dataset="d2", failed_stage="validate", error="validate: 2 failed")
    lake.write_bytes(ok.model_dump_json().encode(), lake.path(*RUNS, "d1", "20261201T000000000000Z-a.json"))
    lake.write_bytes(bad.model_dump_json().encode(), lake.path(*RUNS, "d2", "20261202T000000000000Z-b.json"))
    assert [r.run_id for r in recent_runs(lake)] == ["b", "a"]
    assert [r.run_id for r in recent_runs(lake, limit=1)] == ["b"]
    assert stage_outcomes(ok) == [{"stage": "ingest", "outcome": "cached", "seconds": 1.0}]
    assert stage_outcomes(bad) == [{"stage": "validate", "outcome": "failed", "seconds": None}]


def test_local_services_are_read_from_the_script(tmp_path: Path) -> None:
    script = tmp_path / "services.sh"
    lines = ["redis: running (pid 12) redis://127.0.0.1:6379", "kafka: stopped"]
    script.write_text("#!/bin/sh\n" + "".join(f"echo '{line}' >&2\n" for line in lines))
    script.chmod(0o755)
    assert local_services(script) == {
        "redis": {"running": True, "url": "redis://127.0.0.1:6379"},
        "kafka": {"running": False, "url": None},
    }
    assert local_services(tmp_path / "missing.sh") == {}
    json.dumps(local_services(script))  # what --json prints
