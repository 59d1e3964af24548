"""Serving benchmark: Fusion (cache miss, cache hit, a 90%-hit mix) through each ingress (`direct`:
HAProxy to each replica's own HTTP server; `proxy`: Ray Serve's Python proxy) vs `mlflow models serve`
(the peer) vs a minimal uvicorn + FastAPI app calling the same model in-process (the floor).

    python -m benchmarks.serving --write docs/BENCHMARKS.md     (what `make bench-serving` runs)

One run: a pipeline run into a temporary FUSION_HOME registers the flights champion (the shipped
config) and materializes its online features into Redis from infra/local; the floor and the peers are
started on loopback against that one registry, then Fusion with each ingress in turn (one Ray cluster
up at a time); each server is driven alone by closed-loop aiohttp clients in this process (1, 8, 32,
64 at once), one row per request, for a fixed time after a warm-up; the `direct` ingress's cells, on
which the targets are read, `--rounds` times (in each round one kind's client counts back to back, up,
then down the next round), their median reported; a drop past saturation is read within each round.
Rows are the run's own feature rows in MLflow's `dataframe_split` format; every (ingress, concurrency,
round) takes a fresh slice, so
Fusion's cache-miss rows are never in the cache (the hits counted during those cells are reported).
Cache hit: 64 rows sent once beforehand, then cycled; the mix sends one of them 9 times in 10.
Fusion's `/v1/predict` (raw records: online features + model) is measured too, on raw flights rows.
A 503 (a replica's queue full: `serving.max_queued_requests`) is counted apart from other errors.
For Fusion's cells, the CPU each process group spent per answered request (psutil, user + system)
is the profile: proxy or HAProxy, replicas, Serve's controller, the rest of Ray, Redis, the client.

The load generator shares the machine's cores with the servers: every server pays for it alike.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import numpy as np
import polars as pl
import psutil

from benchmarks.pipeline import machine, write_section
from fusion.core.net import free_port

REPO = Path(__file__).resolve().parent.parent
SERVICES = REPO / "infra" / "local" / "services.sh"
BIN = Path(sys.executable).parent
CONFIG = "configs/flights.yaml"
MODEL = "flights_delay"
REDIS_URL = f"redis://127.0.0.1:{os.environ.get('FUSION_REDIS_PORT', '6379')}/0"
CLIENTS = (1, 8, 32, 64)
INGRESSES = ("direct", "proxy")
HOT_ROWS = 64
FLOOR = "uvicorn + FastAPI in-process (floor)"


def wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, timeout_s: float = 180) -> float:
    started = time.perf_counter()
    while time.perf_counter() - started < timeout_s:
        if proc.poll() is not None:
            raise RuntimeError(f"{url} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return time.perf_counter() - started
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} not ready after {timeout_s} s:\n{log.read_text()[-3000:]}")


class Servers:
    """The servers under test as child processes (own process groups), stopped together."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.procs: list[subprocess.Popen[bytes]] = []
        self.startup_s: dict[str, float] = {}

    def start(self, name: str, command: list[str], env: dict[str, str], ready: str) -> None:
        log = self.home / f"{name}.log"
        proc = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True
        )
        self.procs.append(proc)
        self.startup_s[name] = wait_ready(ready, proc, log)

    def stop(self) -> None:
        """SIGTERM to each server's own process, as Kubernetes and Ctrl-C's handler give it, then whatever is
        left of its process group killed. Not SIGTERM to the whole group: Ray's raylet, in `fusion serve`'s
        group, would die first and take the server down before its shutdown (Ray's processes linger into
        the next server's cells and HAProxy's folder stays behind)."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=60)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)


def register_model(home: Path, env: dict[str, str]) -> dict[str, Any]:
    """A pipeline run of the shipped flights config into `home`; returns its summary."""
    command = [str(BIN / "fusion"), "run", "--json", "--config", CONFIG]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"pipeline run failed:\n{done.stderr[-3000:]}")
    return dict(json.loads(done.stdout))


def model_rows(home: Path, fusion_url: str) -> pl.DataFrame:
    """The run's feature rows as the model's inputs (the signature's string/double columns)."""
    info = httpx.get(f"{fusion_url}/v2/models/{MODEL}", timeout=30).json()
    frame = pl.read_parquet(sorted((home / "lake" / "features" / "flights").rglob("*.parquet"))[0])
    columns = [pl.col(t["name"]).cast(pl.String if t["datatype"] == "BYTES" else pl.Float64) for t in info["inputs"]]
    return frame.select(columns).sample(fraction=1.0, shuffle=True, seed=11)


def raw_records(home: Path, fields: list[str]) -> list[dict[str, Any]]:
    path = sorted((home / "lake" / "validated" / "flights").rglob("flights.parquet"))[0]
    frame = pl.read_parquet(path).select(fields).sample(fraction=1.0, shuffle=True, seed=11)
    frame = frame.with_columns(pl.col(pl.Datetime).dt.replace_time_zone(None).dt.to_string("%Y-%m-%dT%H:%M:%S"))
    return frame.to_dicts()


def split_body(columns: list[str], row: tuple[Any, ...]) -> bytes:
    return json.dumps({"dataframe_split": {"columns": columns, "data": [list(row)]}}).encode()


async def drive(
    url: str, body: Callable[[int], bytes], clients: int, seconds: float, warmup_s: float
) -> dict[str, Any]:
    """Closed loop: `clients` workers each send one request after another; latencies of requests
    started after the warm-up and finished before the end."""
    latencies: list[float] = []
    errors: list[str] = []
    rejected: list[float] = []
    counter = iter(range(10**9))
    connector = aiohttp.TCPConnector(limit=clients, force_close=False)
    headers = {"Content-Type": "application/json"}
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
        loop = asyncio.get_running_loop()
        measure_from = loop.time() + warmup_s
        end = measure_from + seconds

        async def worker() -> None:
            while True:
                data = body(next(counter))
                t0 = loop.time()
                async with session.post(url, data=data) as response:
                    text = await response.read()
                    status = response.status
                t1 = loop.time()
                if t1 > end:
                    return
                if t0 >= measure_from:
                    if status == 200:
                        latencies.append(t1 - t0)
                    elif status == 503:
                        rejected.append(t1 - t0)
                    else:
                        errors.append(f"{status}: {text[:200]!r}")

        await asyncio.gather(*(worker() for _ in range(clients)))
    ms = np.asarray(latencies or [float("nan")]) * 1000
    return {
        "requests": len(latencies),
        "rejected_503": len(rejected),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "rps": len(latencies) / seconds,
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(ms.mean()),
    }


def counters(fusion_url: str) -> dict[str, float]:
    text = httpx.get(f"{fusion_url}/metrics", timeout=30).text
    found: dict[str, float] = {}
    for kind in ("hits", "misses"):
        name = f"fusion_serving_cache_{kind}_total"
        found[kind] = sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))
    return found


def component(process: psutil.Process) -> str | None:
    """Which part of serving a process is (None: not serving's)."""
    try:
        name, command = process.name(), " ".join(process.cmdline()[:4])
    except psutil.Error:
        return None
    if process.pid == os.getpid():
        return "client"
    for key, part in (
        ("haproxy", "HAProxy"),
        ("ServeReplica", "replicas"),
        ("ProxyActor", "Serve proxy"),
        ("ServeController", "Serve controller"),
        ("redis-server", "Redis"),
        ("fusion serve", "fusion serve"),  # the driver: Ray's start, then following the replicas' log files
    ):
        if key in name or key in command:
            return part
    if name in ("raylet", "gcs_server") or "ray::" in name or "/ray/" in command:
        return "rest of Ray"
    return None


def cpu_seconds() -> dict[tuple[int, str], float]:
    found = {}
    for process in psutil.process_iter():
        part = component(process)
        if part is not None:
            try:
                times = process.cpu_times()
            except psutil.Error:
                continue
            found[(process.pid, part)] = times.user + times.system
    return found


def cpu_ms_per_request(before: dict[tuple[int, str], float], answered: int) -> dict[str, float]:
    spent: dict[str, float] = {}
    for (pid, part), seconds in cpu_seconds().items():
        spent[part] = spent.get(part, 0.0) + seconds - before.get((pid, part), 0.0)
    return {part: 1000 * seconds / max(answered, 1) for part, seconds in sorted(spent.items())}


def fusion_cells(
    url: str,
    ingress: str,
    number: int,
    columns: list[str],
    data: list[tuple[Any, ...]],
    records: list[dict[str, Any]],
    seconds: float,
    warmup_s: float,
    rounds: int,
    max_rounds: int,
) -> list[dict[str, Any]]:
    """Every cell of one Fusion server (its `number` among the ingresses picks fresh row slices), measured
    `rounds` times: in each round, each kind's client counts back to back, up, then down the next round
    (drift falls on every count alike); one cell per (kind, clients, round)."""
    hot = data[-HOT_ROWS:]
    for row in hot:  # the cache-hit rows, cached once
        httpx.post(
            f"{url}/invocations",
            content=split_body(columns, row),
            timeout=30,
            headers={"Content-Type": "application/json"},
        ).raise_for_status()
    slice_len = (len(data) - HOT_ROWS) // (len(CLIENTS) * len(INGRESSES) * max_rounds)

    def bodies(offset: int) -> dict[str, Callable[[int], bytes]]:
        """Each kind's request bodies for one (round, clients) cell: its own slice of fresh rows."""

        def fresh(i: int) -> bytes:
            return split_body(columns, data[offset + i % slice_len])

        def cached(i: int) -> bytes:
            return split_body(columns, hot[i % HOT_ROWS])

        def mixed(i: int) -> bytes:  # fresh rows from the slice's end: not the miss cell's
            fresh = data[offset + slice_len - 1 - i % slice_len]
            return split_body(columns, fresh if i % 10 == 0 else hot[i % HOT_ROWS])

        def record(i: int) -> bytes:
            return json.dumps({"records": [records[(offset + i) % len(records)]]}).encode()

        return {"fresh": fresh, "cached": cached, "mixed": mixed, "record": record}

    plan = [
        (f"fusion {ingress}, cache miss", "/invocations", "fresh"),
        (f"fusion {ingress}, cache hit", "/invocations", "cached"),
    ]
    if ingress == INGRESSES[0]:
        plan += [
            (f"fusion {ingress}, 90% hits", "/invocations", "mixed"),
            (f"fusion {ingress} /v1/predict (raw records), cache miss", "/v1/predict", "record"),
        ]
    cells: list[dict[str, Any]] = []
    for round_ in range(rounds):
        # one kind's client counts back to back (up, then down the next round): a drop past saturation is
        # read within a round, between cells seconds apart, not across this VM's slow and fast minutes
        order = range(len(CLIENTS)) if round_ % 2 == 0 else reversed(range(len(CLIENTS)))
        levels = list(order)
        for system, path, kind in plan:
            for level in levels:
                clients = CLIENTS[level]
                offset = ((number * max_rounds + round_) * len(CLIENTS) + level) * slice_len
                before = counters(url)
                cpu = cpu_seconds()
                cell = asyncio.run(drive(url + path, bodies(offset)[kind], clients, seconds, warmup_s))
                answered = int(cell["requests"] * (seconds + warmup_s) / seconds)  # warm-up's CPU counted too
                cell["cpu_ms"] = cpu_ms_per_request(cpu, answered)
                after = counters(url)
                cell["cache_hits"] = after["hits"] - before["hits"]
                cell["cache_misses"] = after["misses"] - before["misses"]
                cells.append({"system": system, "clients": clients, "round": round_, **cell})
                print(json.dumps(cells[-1]), file=sys.stderr, flush=True)
    return cells


def merge_rounds(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One cell per (system, clients): rates, latencies and CPU are the rounds' medians (a slow minute of
    this VM moves one round, not the figure), counts their sums."""
    merged: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for c in cells:
        merged.setdefault((c["system"], c["clients"]), []).append(c)
    out = []
    for (system, clients), group in merged.items():  # the first round's order
        cell: dict[str, Any] = {"system": system, "clients": clients, "rounds": len(group)}
        for key in ("rps", "p50_ms", "p99_ms", "mean_ms"):
            cell[key] = float(np.median([c[key] for c in group]))
        for key in ("requests", "rejected_503", "errors", "cache_hits", "cache_misses"):
            cell[key] = sum(c[key] for c in group)
        cell["first_error"] = next((c["first_error"] for c in group if c["first_error"]), None)
        parts = {k for c in group for k in c["cpu_ms"]}
        cell["cpu_ms"] = {k: float(np.median([c["cpu_ms"].get(k, 0.0) for c in group])) for k in sorted(parts)}
        out.append(cell)
    return out


def measure(
    home: Path, seconds: float, warmup_s: float, mlflow_workers: list[int], replicas: int, rounds: int
) -> dict[str, Any]:
    uri = f"sqlite:///{home / 'mlflow.db'}"
    env = {**os.environ, "FUSION_HOME": str(home), "FUSION_REDIS_URL": REDIS_URL, "PYTHONUNBUFFERED": "1"}
    env["PATH"] = f"{BIN}:{env.get('PATH', '')}"  # `mlflow models serve` execs `uvicorn` from PATH
    servers = Servers(home)
    ports = {"floor": free_port()}
    urls = {k: f"http://127.0.0.1:{p}" for k, p in ports.items()}
    try:
        floor_env = {**env, "FUSION_BENCH_TRACKING_URI": uri, "FUSION_BENCH_MODEL": MODEL}
        floor = [str(BIN / "python"), "-m", "uvicorn", "benchmarks.serving_floor:app", "--port", str(ports["floor"])]
        servers.start(
            "floor", [*floor, "--no-access-log", "--log-level", "warning"], floor_env, f"{urls['floor']}/ping"
        )
        for workers in mlflow_workers:
            port = free_port()
            peer = [str(BIN / "mlflow"), "models", "serve", "-m", f"models:/{MODEL}@champion", "--env-manager"]
            peer += ["local", "-h", "127.0.0.1", "-p", str(port), "-w", str(workers)]
            name = f"mlflow-w{workers}"
            urls[name] = f"http://127.0.0.1:{port}"
            servers.start(name, peer, {**env, "MLFLOW_TRACKING_URI": uri}, f"{urls[name]}/ping")

        cells: list[dict[str, Any]] = []
        round_cells: list[dict[str, Any]] = []  # the `direct` ingress's cells, round by round
        columns: list[str] = []
        data: list[tuple[Any, ...]] = []
        records: list[dict[str, Any]] = []
        for number, ingress in enumerate(INGRESSES):
            port = free_port()  # a port of its own: the last server's may still be closing
            urls["fusion"] = f"http://127.0.0.1:{port}"
            fusion = [str(BIN / "fusion"), "serve", "--config", CONFIG, "--port", str(port)]
            fusion_env = {**env, "FUSION_SERVING__REPLICAS": str(replicas), "FUSION_SERVING__INGRESS": ingress}
            fusion_server = Servers(home)
            fusion_server.start(f"fusion-{ingress}", fusion, fusion_env, f"{urls['fusion']}/v2/health/ready")
            servers.startup_s.update(fusion_server.startup_s)
            try:
                if not columns:  # the same rows for both ingresses: one registry, one model
                    rows = model_rows(home, urls["fusion"])
                    columns, data = rows.columns, rows.rows()
                    openapi = httpx.get(f"{urls['fusion']}/openapi.json", timeout=30).json()
                    records = raw_records(home, list(openapi["components"]["schemas"]["Record"]["properties"]))
                repeat = rounds if ingress == INGRESSES[0] else 1  # the targets are read on the first ingress
                measured = fusion_cells(
                    urls["fusion"], ingress, number, columns, data, records, seconds, warmup_s, repeat, rounds
                )
                cells += merge_rounds(measured)
                if ingress == INGRESSES[0]:
                    round_cells = measured
            finally:
                fusion_server.stop()

        for clients in CLIENTS:
            offset = clients * 97  # any rows: the peers and the floor cache nothing

            def plain(i: int, offset: int = offset) -> bytes:
                return split_body(columns, data[(offset + i) % len(data)])

            peers = [
                (f"mlflow models serve -w {w} (peer)", f"{urls[f'mlflow-w{w}']}/invocations") for w in mlflow_workers
            ]
            for system, url in [*peers, (FLOOR, f"{urls['floor']}/invocations")]:
                cell = asyncio.run(drive(url, plain, clients, seconds, warmup_s))
                cells.append({"system": system, "clients": clients, **cell})
                print(json.dumps(cells[-1]), file=sys.stderr, flush=True)
        return {"cells": cells, "round_cells": round_cells, "startup_s": servers.startup_s, "features": len(columns)}
    finally:
        servers.stop()


def report(results: dict[str, Any]) -> str:
    cells = results["cells"]

    def cell(system: str, clients: int) -> dict[str, Any]:
        return next(c for c in cells if c["system"] == system and c["clients"] == clients)

    best = INGRESSES[0]
    miss, hit, mix = (f"fusion {best}, cache miss", f"fusion {best}, cache hit", f"fusion {best}, 90% hits")
    peer = next(c["system"] for c in cells if c["system"].startswith("mlflow models serve -w 1"))
    lines = [
        "## Serving (`make bench-serving`)",
        "",
        f"Measured {results['date']} on {results['machine']}.",
        f"Command: `{results['command']}`. Model: the shipped flights config's champion "
        f"(LightGBM, {results['features']} inputs), registered by a pipeline run in the same benchmark run. "
        f"Fusion: `fusion serve` with {results['replicas']} replicas (`serving.replicas`), the rest of the "
        "`serving` section as shipped (batches of up to 32, 2 ms wait, one OpenMP and Polars thread per "
        "replica, 32 requests worked on and 32 queued per replica, then 503), through each ingress "
        "(`serving.ingress`: `direct`, the default, HAProxy to each replica's own HTTP server; `proxy`, Ray "
        "Serve's Python proxy), one Ray cluster up at a time; "
        "`mlflow models serve --env-manager local` with 1 and 2 uvicorn workers. "
        f"One row per request, {results['seconds']:.0f} s per cell after {results['warmup_s']:.0f} s of warm-up, "
        f"`{INGRESSES[0]}` cells measured {results['rounds']} times on one server (in each round one kind's "
        "client counts back to back, up, then down the next round: "
        "drift falls on every count alike), the rounds' median reported (503s and cache hits / misses: summed "
        "over the rounds); "
        "closed-loop aiohttp clients on the same 2 cores as the servers; each server driven alone. "
        "req/s counts answered (200) requests; 503s are counted apart.",
        "",
        "| server | clients | req/s | p50 ms | p99 ms | 503s | errors | cache hits / misses |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in cells:
        hits = f"{c['cache_hits']:.0f} / {c['cache_misses']:.0f}" if "cache_hits" in c else ""
        lines.append(
            f"| {c['system']} | {c['clients']} | {c['rps']:.0f} | {c['p50_ms']:.1f} | {c['p99_ms']:.1f} "
            f"| {c['rejected_503']} | {c['errors']} | {hits} |"
        )
    parts = sorted({k for c in cells for k in c.get("cpu_ms", {})})
    lines += [
        "",
        "Where each request's CPU goes (ms of CPU per answered request, user + system, by process group; "
        "`client` is the load generator):",
        "",
        "| server | clients | " + " | ".join(parts) + " | total |",
        "|---|---:|" + "---:|" * (len(parts) + 1),
    ]
    for c in cells:
        if "cpu_ms" in c and c["clients"] in (8, 32, 64):
            values = [c["cpu_ms"].get(k, 0.0) for k in parts]
            row = " | ".join(f"{v:.2f}" for v in values)
            lines.append(f"| {c['system']} | {c['clients']} | {row} | {sum(values):.2f} |")

    def ratio(a: float, b: float) -> float:
        return a / b if b else float("nan")

    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT met"

    floor = {n: cell(FLOOR, n) for n in CLIENTS}
    miss_ratios = {n: ratio(cell(miss, n)["rps"], floor[n]["rps"]) for n in (8, 32)}
    hit_ratios = {n: ratio(cell(hit, n)["rps"], floor[n]["rps"]) for n in (8, 32)}
    p50 = {n: ratio(cell(hit, n)["p50_ms"], cell(miss, n)["p50_ms"]) for n in (1, 8)}

    def paired(system: str, n: int, speed: bool) -> list[float]:
        """Per round: req/s at n clients / the best at fewer, cells of one kind measured back to back.
        speed: each cell's req/s in units of the machine's speed during that cell, the load generator's
        CPU per request as the ruler (its work per request is the same at every client count)."""
        rounds: dict[int, dict[int, float]] = {}
        for c in results["round_cells"]:
            if c["system"] == system:
                rate = c["rps"] * (c["cpu_ms"].get("client", float("nan")) if speed else 1.0)
                rounds.setdefault(c["round"], {})[c["clients"]] = rate
        return [ratio(rps[n], max(rps[m] for m in CLIENTS if m < n)) for _, rps in sorted(rounds.items())]

    drops = [(system, n, paired(system, n, False)) for system in (miss, hit, mix) for n in (32, 64)]
    adjusted = [(system, n, paired(system, n, True)) for system in (miss, hit, mix) for n in (32, 64)]
    across = []  # the same ratio on the rounds' medians: cells up to minutes apart
    for system in (miss, hit, mix):
        for n in (32, 64):
            before = max(cell(system, m)["rps"] for m in CLIENTS if m < n)
            across.append((system, n, ratio(cell(system, n)["rps"], before)))
    p99 = ratio(cell(miss, 8)["p99_ms"], floor[8]["p99_ms"])
    proxy = {n: ratio(cell(miss, n)["rps"], cell(f"fusion {INGRESSES[1]}, cache miss", n)["rps"]) for n in (8, 32)}

    def median(found: list[float]) -> float:
        return float(np.median(found))

    worst = min(adjusted, key=lambda d: median(d[2]))
    worst_raw = min(drops, key=lambda d: median(d[2]))
    worst_across = min(across, key=lambda d: d[2])
    lines += [
        "",
        f"Targets (issue 20; ratios within this run, `{best}` ingress):",
        "- Cache miss ≥ 0.5x the floor's req/s at 8 and 32 clients: "
        + ", ".join(f"**{miss_ratios[n]:.2f}x** at {n}" for n in (8, 32))
        + f" — {verdict(min(miss_ratios.values()) >= 0.5)}.",
        "- Cache hit ≥ 0.8x the floor: "
        + ", ".join(f"**{hit_ratios[n]:.2f}x** at {n}" for n in (8, 32))
        + f" — {verdict(min(hit_ratios.values()) >= 0.8)}.",
        "- Cache-hit p50 ≤ 0.5x cache-miss p50 at 1 and 8 clients: "
        + ", ".join(f"**{p50[n]:.2f}** at {n}" for n in (1, 8))
        + f" — {verdict(max(p50.values()) <= 0.5)}.",
        "- No throughput drop past saturation (req/s at 32 and 64 clients vs the best at fewer in the same "
        "round, at the machine's speed during each cell; the rounds' median, 10% noise allowed): lowest "
        f"**{median(worst[2]):.2f}x** ({worst[0]}, {worst[1]} clients) — {verdict(median(worst[2]) >= 0.9)}. "
        f"Raw req/s, same rounds: lowest {median(worst_raw[2]):.2f}x ({worst_raw[0]}, {worst_raw[1]} clients); "
        f"on the rounds' medians (cells minutes apart): lowest {worst_across[2]:.2f}x ({worst_across[0]}, "
        f"{worst_across[1]} clients). Per round in the table below.",
        f"- p99 at 8 clients ≤ 2x the floor's: **{p99:.2f}x** ({cell(miss, 8)['p99_ms']:.1f} vs "
        f"{floor[8]['p99_ms']:.1f} ms) — {verdict(p99 <= 2)}.",
        f"- `{best}` vs `{INGRESSES[1]}` ingress, cache miss: "
        + ", ".join(f"**{proxy[n]:.2f}x** at {n}" for n in (8, 32))
        + f"; vs `{peer}` at 32 clients: **{ratio(cell(miss, 32)['rps'], cell(peer, 32)['rps']):.2f}x**.",
        "",
        "Past saturation, round by round: req/s at 32 or 64 clients / the best at fewer clients in the same round "
        "(one kind's cells back to back). This VM's speed moves within seconds, the load generator's alike "
        "(its CPU per request, the same work at every client count, moves with the servers'), so each cell's "
        "req/s is also read at the machine's speed during it: req/s x the load generator's CPU ms per request.",
        "",
        "| kind | clients | raw, per round | raw, median | at the machine's speed, per round | median |",
        "|---|---:|---|---:|---|---:|",
    ]
    for (system, n, raw), (_, _, fair) in zip(drops, adjusted, strict=True):
        lines.append(
            f"| {system.removeprefix(f'fusion {best}, ')} | {n} | {' / '.join(f'{r:.2f}' for r in raw)} "
            f"| {median(raw):.2f} | {' / '.join(f'{r:.2f}' for r in fair)} | {median(fair):.2f} |"
        )
    lines += [
        "",
        "Start to ready (s): " + ", ".join(f"{k} {v:.1f}" for k, v in results["startup_s"].items()) + ".",
    ]
    return "\n".join(lines) + "\n"


LOG_SETUPS = (
    ("text logs, no access log", {"FUSION_LOG_FORMAT": "text", "FUSION_SERVING__ACCESS_LOG": "false"}),
    ("JSON logs, no access log", {"FUSION_LOG_FORMAT": "json", "FUSION_SERVING__ACCESS_LOG": "false"}),
    ("JSON logs, access log", {"FUSION_LOG_FORMAT": "json", "FUSION_SERVING__ACCESS_LOG": "true"}),
)
# One replica with more threads against more replicas (issue 20): a replica works on small requests on its
# event loop and calls the model with `serving.model_threads` OpenMP threads; replicas are processes.
SCALING_SETUPS = (
    ("1 replica, 1 model thread", {"FUSION_SERVING__REPLICAS": "1", "FUSION_SERVING__MODEL_THREADS": "1"}),
    ("1 replica, 2 model threads", {"FUSION_SERVING__REPLICAS": "1", "FUSION_SERVING__MODEL_THREADS": "2"}),
    ("2 replicas, 1 model thread (shipped)", {"FUSION_SERVING__REPLICAS": "2", "FUSION_SERVING__MODEL_THREADS": "1"}),
    ("3 replicas, 1 model thread", {"FUSION_SERVING__REPLICAS": "3", "FUSION_SERVING__MODEL_THREADS": "1"}),
)
SETUP_CLIENTS = (8, 32)


def measure_setups(
    home: Path, setups: tuple[tuple[str, dict[str, str]], ...], seconds: float, warmup_s: float, rounds: int
) -> dict[str, Any]:
    """Fusion (`direct` ingress) under each setup (environment variables over the shipped config) in turn,
    `rounds` times over (ABCABC: drift falls on every setup alike): cache hits and misses at 8 and 32
    clients."""
    env = {**os.environ, "FUSION_HOME": str(home), "FUSION_REDIS_URL": REDIS_URL, "PYTHONUNBUFFERED": "1"}
    env |= {"FUSION_SERVING__INGRESS": INGRESSES[0]}
    cells: list[dict[str, Any]] = []
    rows: pl.DataFrame | None = None
    startup: dict[str, float] = {}
    for round_ in range(rounds):
        for name, setup in setups:
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            server = Servers(home)
            command = [str(BIN / "fusion"), "serve", "--config", CONFIG, "--port", str(port)]
            server.start(f"fusion-{len(cells)}", command, {**env, **setup}, f"{url}/v2/health/ready")
            startup[name] = max(startup.get(name, 0.0), *server.startup_s.values())
            try:
                rows = model_rows(home, url) if rows is None else rows
                for cell in log_cells(url, rows, sum(c["sent"] for c in cells), seconds, warmup_s):
                    cells.append({"setup": name, "round": round_, **cell})
                    print(json.dumps(cells[-1]), file=sys.stderr, flush=True)
            finally:
                server.stop()
    return {"cells": cells, "startup_s": startup}


def log_cells(url: str, rows: pl.DataFrame, used: int, seconds: float, warmup_s: float) -> list[dict[str, Any]]:
    """Cache misses (rows after the first `used` + the hot ones: never sent before) and hits, per clients."""
    columns, data = rows.columns, rows.rows()
    hot = data[:HOT_ROWS]
    for row in hot:
        headers = {"Content-Type": "application/json"}
        httpx.post(f"{url}/invocations", content=split_body(columns, row), headers=headers, timeout=30)
    cells: list[dict[str, Any]] = []
    for clients in SETUP_CLIENTS:
        start = HOT_ROWS + used
        sent = iter(range(10**9))

        def fresh(i: int, start: int = start, sent: Any = sent) -> bytes:
            next(sent)
            return split_body(columns, data[(start + i) % len(data)])

        def cached(i: int) -> bytes:
            return split_body(columns, hot[i % HOT_ROWS])

        for kind, body in (("cache miss", fresh), ("cache hit", cached)):
            cpu = cpu_seconds()
            cell = asyncio.run(drive(f"{url}/invocations", body, clients, seconds, warmup_s))
            answered = int(cell["requests"] * (seconds + warmup_s) / seconds)
            cell["cpu_ms"] = sum(cpu_ms_per_request(cpu, answered).values())
            cell["sent"] = next(sent) if kind == "cache miss" else 0  # fresh rows this cell took
            used += cell["sent"]
            cells.append({"kind": kind, "clients": clients, **cell})
    return cells


def setup_rows(results: dict[str, Any], setups: tuple[tuple[str, dict[str, str]], ...]) -> list[str]:
    """The table of `measure_setups`' cells: each (setup, request, clients), the rounds' means."""
    cells = results["cells"]
    lines = [
        "| setup | request | clients | req/s | p50 ms | p99 ms | CPU ms/request | errors |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, _ in setups:
        for kind in ("cache miss", "cache hit"):
            for clients in SETUP_CLIENTS:
                errors = sum(
                    c["errors"] + c["rejected_503"]
                    for c in cells
                    if (c["setup"], c["kind"], c["clients"]) == (name, kind, clients)
                )
                lines.append(
                    f"| {name} | {kind} | {clients} | {setup_mean(cells, name, kind, clients, 'rps'):.0f} "
                    f"| {setup_mean(cells, name, kind, clients, 'p50_ms'):.1f} "
                    f"| {setup_mean(cells, name, kind, clients, 'p99_ms'):.1f} "
                    f"| {setup_mean(cells, name, kind, clients, 'cpu_ms'):.2f} | {errors} |"
                )
    return lines


def setup_mean(cells: list[dict[str, Any]], setup: str, kind: str, clients: int, key: str) -> float:
    found = [c[key] for c in cells if (c["setup"], c["kind"], c["clients"]) == (setup, kind, clients)]
    return float(np.mean(found))


def setup_ratios(cells: list[dict[str, Any]], a: str, b: str, kind: str) -> str:
    """req/s of setup a over setup b at each client count, as the section's bold figures."""
    return ", ".join(
        f"**{setup_mean(cells, a, kind, n, 'rps') / setup_mean(cells, b, kind, n, 'rps'):.2f}x** at {n}"
        for n in SETUP_CLIENTS
    )


def setups_method(results: dict[str, Any], what: str) -> str:
    return (
        f"Measured {results['date']} on {results['machine']}.\n"
        f"Command: `{results['command']}`. `fusion serve` (`direct` ingress, the shipped flights champion, "
        f"registered by a pipeline run in the same benchmark run) {what}. Each setup started "
        f"{results['rounds']} times, in turn (ABCABC); one row per `/invocations` request, "
        f"{results['seconds']:.0f} s per cell after {results['warmup_s']:.0f} s of warm-up, closed-loop clients "
        "on the same 2 cores; figures are the rounds' mean. CPU: ms per answered request over every serving "
        "process (HAProxy, replicas, Ray, Redis, `fusion serve`, the client)."
    )


def report_logs(results: dict[str, Any]) -> str:
    cells = results["cells"]
    base, json_only, access = (name for name, _ in LOG_SETUPS)
    what = (
        f"with {results['replicas']} replicas under three logging setups: `FUSION_LOG_FORMAT` text or json, "
        "`serving.access_log` off or on (a JSON line per request in the replica's log file, copied by "
        "`fusion serve` to its stderr)"
    )
    lines = [
        "## Serving logs (`make bench-serving-logs`)",
        "",
        setups_method(results, what),
        "",
        *setup_rows(results, LOG_SETUPS),
        "",
        "Ratios of req/s within this run:",
        f"- access log on vs off (both JSON): cache miss {setup_ratios(cells, access, json_only, 'cache miss')}; "
        f"cache hit {setup_ratios(cells, access, json_only, 'cache hit')}.",
        f"- JSON vs text logs (access log off): cache miss {setup_ratios(cells, json_only, base, 'cache miss')}; "
        f"cache hit {setup_ratios(cells, json_only, base, 'cache hit')}.",
    ]
    return "\n".join(lines) + "\n"


def report_scaling(results: dict[str, Any]) -> str:
    cells = results["cells"]
    one, one_threads, shipped, three = (name for name, _ in SCALING_SETUPS)
    what = (
        "with one replica or more, and one or two OpenMP threads for the model calls "
        "(`serving.replicas`, `serving.model_threads`; the rest of the `serving` section as shipped)"
    )
    lines = [
        "## Serving: replicas against threads (`make bench-serving-scaling`)",
        "",
        setups_method(results, what),
        "",
        *setup_rows(results, SCALING_SETUPS),
        "",
        "Ratios of req/s within this run:",
    ]
    for label, a, b in (
        ("2 replicas vs 1 replica with 2 model threads", shipped, one_threads),
        ("2 replicas vs 1 replica", shipped, one),
        ("1 replica: 2 model threads vs 1", one_threads, one),
        ("3 replicas vs 2", three, shipped),
    ):
        lines.append(
            f"- {label}: cache miss {setup_ratios(cells, a, b, 'cache miss')}; "
            f"cache hit {setup_ratios(cells, a, b, 'cache hit')}."
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8.0, help="measured seconds per cell")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds per cell before measuring")
    parser.add_argument("--mlflow-workers", type=int, nargs="+", default=[1, 2], help="peer configurations")
    parser.add_argument("--replicas", type=int, default=2, help="Fusion model replicas (serving.replicas)")
    parser.add_argument("--home", type=Path, help="reuse a FUSION_HOME with a champion (skips the pipeline run)")
    parser.add_argument("--write", type=Path, help="update this BENCHMARKS.md")
    parser.add_argument("--logs", action="store_true", help="the cost of JSON logs and of the access log instead")
    parser.add_argument("--scaling", action="store_true", help="one replica with more threads vs more replicas instead")
    parser.add_argument(
        "--rounds",
        type=int,
        default=4,
        help="times each `direct` ingress cell is measured (each kind's client counts back to back, up, then down; "
        "medians reported); "
        "with --logs or --scaling: times each setup is measured",
    )
    args = parser.parse_args()
    status = subprocess.run([str(SERVICES), "status", "redis"], capture_output=True, text=True, check=True)
    started_redis = "redis: running" not in status.stderr
    subprocess.run([str(SERVICES), "up", "redis"], check=True)
    home = args.home or Path(tempfile.mkdtemp(prefix="fusion-bench-serving-"))
    try:
        if args.home is None:
            env = {**os.environ, "FUSION_HOME": str(home), "FUSION_REDIS_URL": REDIS_URL}
            summary = register_model(home, env)
            print(f"registered {MODEL} v{summary.get('model_version')}", file=sys.stderr)
        if args.logs or args.scaling:
            replicas = {"FUSION_SERVING__REPLICAS": str(args.replicas)}
            setups = tuple((n, replicas | e) for n, e in LOG_SETUPS) if args.logs else SCALING_SETUPS
            results = measure_setups(home, setups, args.seconds, args.warmup, args.rounds)
        else:
            results = measure(home, args.seconds, args.warmup, args.mlflow_workers, args.replicas, args.rounds)
    finally:
        if started_redis:
            subprocess.run([str(SERVICES), "down", "redis"], check=False)
        if args.home is None:
            shutil.rmtree(home, ignore_errors=True)
    results.update(
        date=dt.date.today().isoformat(),
        machine=machine(),
        command=f"make bench-serving{'-logs' if args.logs else '-scaling' if args.scaling else ''}",
        replicas=args.replicas,
        seconds=args.seconds,
        warmup_s=args.warmup,
        rounds=args.rounds,
    )
    section = report_logs(results) if args.logs else report_scaling(results) if args.scaling else report(results)
    print(section)
    if args.write:
        write_section(args.write, section)


if __name__ == "__main__":
    main()
