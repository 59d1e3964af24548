"""Pipeline, trigger and serving metrics in a real Prometheus: a run pushes to the Pushgateway, `fusion trigger`
serves its metrics, serving its /metrics; Prometheus (infra/local/services.sh) scrapes all three and the test
reads them back through its query API. The alert rules pass promtool, and each panel of the Grafana dashboard
queries metrics that exist."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from fusion.core.net import free_port
from tests.conftest import REPO, SERVICES_STATE
from tests.services.support import TriggerProcess, send
from tests.serving.conftest import Served

pytestmark = [pytest.mark.integration, pytest.mark.services]
RULES = REPO / "infra" / "prometheus"
DASHBOARD = REPO / "infra" / "grafana" / "fusion-dashboard.json"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    """Debian's promtool (installed with Prometheus by the `prometheus` fixture)."""
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=120, check=False)


def test_the_alert_rules_pass_promtool_and_their_tests_catch_a_wrong_threshold(prometheus: str, tmp_path: Path) -> None:
    checked = promtool("check", "rules", str(RULES / "alerts.yml"))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = promtool("test", "rules", str(RULES / "alerts_test.yml"))
    assert tested.returncode == 0, tested.stdout + tested.stderr
    # the rule tests can fail: 28 h instead of 26 h without a success is caught
    for name in ("alerts.yml", "alerts_test.yml"):
        shutil.copy(RULES / name, tmp_path / name)
    rules = tmp_path / "alerts.yml"
    rules.write_text(rules.read_text().replace("26 * 3600", "28 * 3600"))
    mutated = promtool("test", "rules", str(tmp_path / "alerts_test.yml"))
    assert mutated.returncode != 0 and "FusionNoSuccessfulRun" in mutated.stdout + mutated.stderr


def query(prometheus: str, expr: str) -> list[dict[str, Any]]:
    answer = httpx.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=10).json()
    assert answer["status"] == "success", (expr, answer)
    return list(answer["data"]["result"])


def value(prometheus: str, expr: str) -> float:
    found = query(prometheus, expr)
    assert len(found) == 1, f"{expr}: {found}"
    return float(found[0]["value"][1])


def eventually(check: Any, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            check()
            return
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


@pytest.fixture
def targets(served: Served, kafka_bootstrap: str, prometheus: str, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A `fusion trigger` with its metrics on a free port (its Prefect API unreachable: its run creations
    fail and are counted), and a file-discovery target file naming it and the session's server."""
    port = free_port()
    env = {"FUSION_EVENTS__METRICS_PORT": str(port), "FUSION_LOG_FORMAT": "json"}
    trigger = TriggerProcess(kafka_bootstrap, "http://127.0.0.1:9/api", tmp_path, env)
    serving = served.url.removeprefix("http://")
    found = SERVICES_STATE / "prometheus" / "targets" / f"test-{uuid.uuid4().hex[:8]}.json"
    found.write_text(
        json.dumps(
            [
                {"targets": [serving], "labels": {"job": "fusion-serving"}},
                {"targets": [f"127.0.0.1:{port}"], "labels": {"job": "fusion-trigger"}},
            ]
        )
    )
    try:
        yield {"trigger": trigger, "serving": serving, "trigger_target": f"127.0.0.1:{port}"}
    finally:
        found.unlink(missing_ok=True)
        assert trigger.stop() == 0


def test_prometheus_scrapes_pipeline_trigger_and_serving_metrics(
    served: Served,
    targets: dict[str, Any],
    kafka_bootstrap: str,
    pushgateway: str,
    prometheus: str,
    tmp_path: Path,
) -> None:
    from flows.training_pipeline import run_pipeline
    from fusion.core.settings import load_settings, with_overrides
    from tests.datasets.card_transactions import write

    # a run pushes its metrics when it ends
    paths = write(tmp_path / "data")
    dataset = f"card_transactions_{uuid.uuid4().hex[:6]}"
    settings = with_overrides(
        load_settings(REPO / "configs" / "card_transactions.yaml"),
        {
            "home": str(tmp_path / "home"),
            "pushgateway_url": pushgateway,
            "dataset": {
                "name": dataset,
                "source": {"tables": {"accounts": {"uri": str(paths["accounts"])}}},
                "model": {"registered_name": f"metrics_{dataset}"},
            },
        },
        source_uri=str(paths["transactions"]),
    )
    summary = run_pipeline(settings)
    # the trigger: one record that is not JSON, one valid request whose run cannot be created
    trigger: TriggerProcess = targets["trigger"]
    request = {
        "specversion": "1.0",
        "id": f"metrics-{uuid.uuid4().hex[:8]}",
        "source": "/tests/metrics",
        "type": "fusion.ingest.requested",
        "data": {"dataset": "card_transactions"},
    }
    send(kafka_bootstrap, trigger.requests_topic, [b"{not json", json.dumps(request).encode()])
    # serving: a few requests
    for _ in range(5):
        assert httpx.get(f"{served.url}/v2/health/ready", timeout=10).status_code == 200

    serving_job = f'job="fusion-serving",instance="{targets["serving"]}"'

    def scraped() -> None:
        for job, instance in (("fusion-serving", targets["serving"]), ("fusion-trigger", targets["trigger_target"])):
            assert value(prometheus, f'up{{job="{job}",instance="{instance}"}}') == 1.0, job
        assert query(prometheus, f'fusion_pipeline_last_success_timestamp_seconds{{dataset="{dataset}"}}')
        assert value(prometheus, 'sum(fusion_trigger_deadletters_total{reason="not_json"})') >= 1
        assert value(prometheus, "sum(fusion_trigger_prefect_api_errors_total)") >= 1
        assert query(prometheus, "fusion:serving_request_seconds:p99_5m")
        # scraped after the requests above (an earlier scrape of serving may have come before them)
        assert value(prometheus, f'sum(fusion_serving_requests_total{{{serving_job},route="/v2/health/ready"}})') >= 5

    eventually(scraped)

    # pipeline: what the run did, labelled with its dataset and the job it pushed as
    mine = f'dataset="{dataset}",job="fusion_pipeline"'
    stages = {s["metric"]["stage"] for s in query(prometheus, f"fusion_pipeline_stage_seconds{{{mine}}}")}
    assert stages == {s.stage for s in summary.stages}
    assert value(prometheus, f'fusion_pipeline_rows{{{mine},stage="validate",kind="in"}}') == summary.rows_ingested
    assert (
        value(prometheus, f'fusion_pipeline_rows{{{mine},stage="validate",kind="rejected"}}') == summary.rows_rejected
    )
    assert value(prometheus, f"fusion_pipeline_validation_success{{{mine}}}") == 1.0
    assert value(prometheus, f"fusion_pipeline_gate_promoted{{{mine}}}") == float(summary.promoted)
    assert value(prometheus, f'fusion_model_auc{{{mine},split="test"}}') == pytest.approx(summary.metrics.test_auc)
    # trigger: no run was created, and its lag is known per partition
    trigger_job = f'job="fusion-trigger",instance="{targets["trigger_target"]}"'
    assert value(prometheus, f"fusion_trigger_runs_created_total{{{trigger_job}}}") == 0.0
    assert query(prometheus, f"fusion_trigger_consumer_lag{{{trigger_job}}}")
    # serving: latency histogram, cache counters, circuit and served version per replica
    assert query(prometheus, f"fusion_serving_cache_hits_total{{{serving_job}}}")
    assert {float(s["value"][1]) for s in query(prometheus, f"fusion_serving_breaker_open{{{serving_job}}}")} == {0.0}
    versions = {float(s["value"][1]) for s in query(prometheus, f"fusion_serving_model_version{{{serving_job}}}")}
    assert versions == {float(served.summary.model_version)}

    # the rules Prometheus evaluates are the file's, all healthy
    groups = httpx.get(f"{prometheus}/api/v1/rules", timeout=10).json()["data"]["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert {r["name"] for r in rules if r["type"] == "alerting"} == {
        "FusionServingLatencyHigh",
        "FusionServingErrors",
        "FusionTriggerLagging",
        "FusionNoSuccessfulRun",
        "FusionValidationFailed",
    }
    assert {r["health"] for r in rules} == {"ok"}

    # every dashboard panel's query is valid PromQL over metrics that exist here
    names = set(httpx.get(f"{prometheus}/api/v1/label/__name__/values", timeout=10).json()["data"])
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    assert len(exprs) >= 14
    for expr in exprs:
        used = set(re.findall(r"fusion[_:][A-Za-z0-9_:]*", expr))
        assert used, f"panel query names no Fusion metric: {expr}"
        assert used <= names, f"{expr}: no such metric {sorted(used - names)}"
        query(prometheus, expr)  # status success: it parses and evaluates
