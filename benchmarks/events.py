"""Events benchmark: from an ingest request produced to Kafka to the flow run created by `fusion trigger`.

    python -m benchmarks.events --write docs/BENCHMARKS.md     (what `make bench-events` runs)

Against the real broker and Prefect server from infra/local (started here if not running, and stopped
after). Side by side in one run: the trigger with kafka-python's default fetch wait (500 ms) and with
Fusion's tuned one (20 ms). Latency = the run's `created` time on the Prefect server minus the time
the request was sent (same machine clock); paced requests for latency, a burst for throughput.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from kafka import KafkaProducer

from benchmarks.pipeline import machine, write_section

REPO = Path(__file__).resolve().parent.parent
SERVICES = REPO / "infra" / "local" / "services.sh"
API = f"http://127.0.0.1:{os.environ.get('FUSION_PREFECT_PORT', '4200')}/api"
BOOTSTRAP = f"127.0.0.1:{os.environ.get('FUSION_KAFKA_PORT', '9092')}"


def request(event_id: str) -> bytes:
    return json.dumps(
        {
            "specversion": "1.0",
            "id": event_id,
            "source": "/benchmarks/events",
            "type": "fusion.ingest.requested",
            "data": {"dataset": "flights"},
        }
    ).encode()


def runs_created(prefix: str) -> dict[str, float]:
    """event id -> creation time (epoch s) of the runs whose event ids start with prefix."""
    created: dict[str, float] = {}
    offset = 0
    while True:
        body = {"flow_runs": {"tags": {"all_": ["fusion-trigger"]}}, "limit": 200, "offset": offset}
        page = httpx.post(f"{API}/flow_runs/filter", json=body, timeout=30).json()
        for run in page:
            key = run.get("idempotency_key") or ""
            if key.startswith(prefix):
                created[key] = dt.datetime.fromisoformat(run["created"]).timestamp()
        if len(page) < 200:
            return created
        offset += 200


def delete_runs(prefix: str) -> None:
    """Remove this benchmark's runs (and only those) so that no worker ever executes them."""
    for _ in range(100):
        body = {"flow_runs": {"tags": {"all_": ["fusion-trigger"]}}, "limit": 200}
        page = httpx.post(f"{API}/flow_runs/filter", json=body, timeout=30).json()
        mine = [r for r in page if (r.get("idempotency_key") or "").startswith(prefix)]
        if not mine:
            return
        for run in mine:
            httpx.delete(f"{API}/flow_runs/{run['id']}", timeout=30)


def count_runs() -> int:
    body = {"flow_runs": {"tags": {"all_": ["fusion-trigger"]}}}
    return int(httpx.post(f"{API}/flow_runs/count", json=body, timeout=30).json())


def wait_for(prefix: str, count: int, timeout_s: float, baseline: int) -> dict[str, float]:
    """Wait with the cheap count endpoint (polling full run lists would load the server being measured)."""
    deadline = time.monotonic() + timeout_s
    while count_runs() - baseline < count and time.monotonic() < deadline:
        time.sleep(2)
    created = runs_created(prefix)
    if len(created) < count:
        raise RuntimeError(f"only {len(created)} of {count} runs were created in {timeout_s} s")
    return created


def measure(fetch_wait_ms: int, paced: int, burst: int, rate_per_s: float) -> dict[str, Any]:
    topic_prefix = f"bench{uuid.uuid4().hex[:6]}"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("FUSION_", "PREFECT_"))},
        "FUSION_KAFKA_BOOTSTRAP_SERVERS": BOOTSTRAP,
        "FUSION_EVENTS__REQUESTS_TOPIC": f"{topic_prefix}.requests",
        "FUSION_EVENTS__DEADLETTER_TOPIC": f"{topic_prefix}.deadletter",
        "FUSION_EVENTS__CONSUMER_GROUP": f"{topic_prefix}-trigger",
        "PREFECT_API_URL": API,
    }
    command = [str(Path(sys.executable).parent / "fusion"), "trigger", "--fetch-max-wait-ms", str(fetch_wait_ms)]
    log_path = Path(f"/tmp/{topic_prefix}.log")
    trigger = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=log_path.open("w"))
    try:
        while "fusion trigger:" not in log_path.read_text():
            if trigger.poll() is not None:
                raise RuntimeError(log_path.read_text()[-3000:])
            time.sleep(0.2)
        producer = KafkaProducer(bootstrap_servers=BOOTSTRAP, acks="all", linger_ms=0)
        # warm-up: the first run creation pays for the deployment lookup and connections
        baseline = count_runs()
        producer.send(f"{topic_prefix}.requests", request(f"{topic_prefix}-warm")).get(timeout=10)
        wait_for(f"{topic_prefix}-warm", 1, 60, baseline)
        baseline += 1

        sent: dict[str, float] = {}
        for i in range(paced):
            event_id = f"{topic_prefix}-p{i:04d}"
            sent[event_id] = time.time()
            producer.send(f"{topic_prefix}.requests", request(event_id), key=b"flights").get(timeout=10)
            time.sleep(1 / rate_per_s)
        created = wait_for(f"{topic_prefix}-p", paced, 300, baseline)
        baseline += paced
        latencies_ms = np.array([(created[e] - sent[e]) * 1000 for e in sent])

        start = time.time()
        for i in range(burst):
            producer.send(f"{topic_prefix}.requests", request(f"{topic_prefix}-b{i:04d}"), key=b"flights")
        producer.flush()
        burst_created = wait_for(f"{topic_prefix}-b", burst, 600, baseline)
        elapsed = max(burst_created.values()) - start
        producer.close()
    finally:
        trigger.send_signal(signal.SIGTERM)
        trigger.wait(timeout=30)
        delete_runs(topic_prefix)
    return {
        "fetch_wait_ms": fetch_wait_ms,
        "p50": float(np.percentile(latencies_ms, 50)),
        "p95": float(np.percentile(latencies_ms, 95)),
        "p99": float(np.percentile(latencies_ms, 99)),
        "max": float(latencies_ms.max()),
        "throughput": burst / elapsed,
    }


def report(rows: list[dict[str, Any]], paced: int, burst: int, rate: float) -> str:
    lines = [
        "## Events (`make bench-events`)",
        "",
        f"Measured {dt.date.today().isoformat()} on {machine()}.",
        "Command: `make bench-events`. Kafka 4.4 single KRaft node and Prefect 3.9 server on PostgreSQL 15 from",
        "infra/local, "
        f"`fusion trigger` creating runs of `training_pipeline/triggered`. Latency over {paced} requests sent at",
        f"{rate:.0f}/s (produce -> run created on the server); throughput over a burst of {burst} requests.",
        "",
        "| trigger fetch wait | p50 (ms) | p95 (ms) | p99 (ms) | max (ms) | sustained runs created / s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        label = f"{r['fetch_wait_ms']} ms" + (" (kafka-python default)" if r["fetch_wait_ms"] == 500 else " (Fusion)")
        lines.append(
            f"| {label} | {r['p50']:.0f} | {r['p95']:.0f} | {r['p99']:.0f} | {r['max']:.0f} | {r['throughput']:.1f} |"
        )
    tuned = next(r for r in rows if r["fetch_wait_ms"] != 500)
    default = next(r for r in rows if r["fetch_wait_ms"] == 500)
    lines += [
        "",
        f"Target p95 <= 500 ms: **{'met' if tuned['p95'] <= 500 else 'not met'}**, {tuned['p95']:.0f} ms with"
        f" Fusion's setting, {default['p95']:.0f} ms with the default (default/tuned"
        f" {default['p95'] / tuned['p95']:.2f}x). kafka-python answers a fetch as soon as",
        "one record is there (fetch_min_bytes=1), so the maximum fetch wait matters only when the topic is idle;",
        "the latency is mostly the Prefect API call that creates the run (one HTTP call on a kept-open client,",
        "records handled one at a time so that an offset is committed only after its run exists). The Prefect",
        "server runs on PostgreSQL (infra/local): on sqlite the same command measured p95 7976 ms, because the",
        "server's event persister and late-runs service hold sqlite's single write lock for ~2 s at a time.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--paced", type=int, default=200)
    parser.add_argument("--burst", type=int, default=300)
    parser.add_argument("--rate", type=float, default=4.0, help="paced requests per second (below capacity)")
    parser.add_argument("--write", type=Path)
    args = parser.parse_args()
    services = ("kafka", "postgres", "prefect")
    status = subprocess.run([str(SERVICES), "status", *services], capture_output=True, text=True, check=True)
    started = [s for s in services if f"{s}: running" not in status.stderr]
    subprocess.run([str(SERVICES), "up", *services], check=True)
    try:
        env = {**os.environ, "PREFECT_API_URL": API, "FUSION_PROJECT_DIR": str(REPO)}
        prefect = str(Path(sys.executable).parent / "prefect")
        if subprocess.run([prefect, "work-pool", "inspect", "fusion-local"], env=env, capture_output=True).returncode:
            subprocess.run([prefect, "work-pool", "create", "fusion-local", "--type", "process"], env=env, check=True)
        subprocess.run([prefect, "--no-prompt", "deploy", "--all"], cwd=REPO, env=env, check=True, capture_output=True)
        rows = [measure(wait, args.paced, args.burst, args.rate) for wait in (500, 20)]
    finally:
        if started:
            subprocess.run([str(SERVICES), "down", *started], check=False)
    section = report(rows, args.paced, args.burst, args.rate)
    print(section)
    if args.write:
        write_section(args.write, section)


if __name__ == "__main__":
    main()
