"""The whole pipeline at growing sizes: wall time and peak RSS of every process, per stage.

`make bench-scale`: `fusion run` on the real 336,776 flights and on generated tables of 1M and 10M rows
(`fusion generate flights`), each with 1 Dask worker process (2 threads: plain LightGBM) and with 2
worker processes (1 thread each: data-parallel LightGBM, the workers reading the lake), on a fresh home with the
cache off. The `fusion run` process and everything it starts are sampled every 0.2 s; each stage's
window comes from its "done in" line on stderr. Writes a table to docs/BENCHMARKS.md and a plot of time
and memory against rows to docs/scale.png.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from benchmarks.pipeline import REPO, clean_env, machine, write_section

COMMAND = "make bench-scale"
DONE = re.compile(r"(?P<stage>[\w-]+) done in (?P<seconds>[\d.]+) s")
TABLES = ("flights", "weather", "planes")


def role(process: psutil.Process, root: int) -> str:
    """What a process of the run is: the flow run process, a Dask worker, Prefect's API, or other."""
    if process.pid == root:
        return "flow"
    try:
        cmd = " ".join(process.cmdline())
    except psutil.Error:
        return "other"
    if "multiprocessing" in cmd or "spawn_main" in cmd or "forkserver" in cmd:
        return "dask-worker"
    if "prefect" in cmd or "uvicorn" in cmd:
        return "prefect-api"
    return "other"


class Sampler:
    """RSS of a process tree every `every` seconds: (time, pid, role, bytes) rows."""

    def __init__(self, root: int, every: float = 0.2) -> None:
        self.root, self.every = root, every
        self.samples: list[tuple[float, int, str, int]] = []
        self.roles: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            top = psutil.Process(self.root)
        except psutil.NoSuchProcess:
            return
        while not self._stop.is_set():
            now = time.perf_counter()
            try:
                tree = [top, *top.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            for p in tree:
                try:
                    rss = p.memory_info().rss
                except psutil.Error:
                    continue
                name = self.roles.setdefault(p.pid, role(p, self.root))
                self.samples.append((now, p.pid, name, rss))
            self._stop.wait(self.every)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def run_once(env: dict[str, str]) -> dict[str, Any]:
    """`fusion run --json` with `env`: its summary, wall time, per-stage windows and RSS samples."""
    command = [str(Path(sys.executable).parent / "fusion"), "run", "--json"]
    started = time.perf_counter()
    child = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sampler = Sampler(child.pid)
    windows: dict[str, tuple[float, float]] = {}
    tail: list[str] = []
    assert child.stderr is not None and child.stdout is not None
    for line in child.stderr:
        tail = [*tail[-40:], line]
        match = DONE.search(line)
        if match:
            end = time.perf_counter()
            windows[match["stage"]] = (end - float(match["seconds"]), end)
    out = child.stdout.read()
    child.wait()
    wall = time.perf_counter() - started
    sampler.stop()
    if child.returncode != 0:
        raise RuntimeError(f"fusion run failed ({child.returncode}):\n{''.join(tail)}")
    summary = json.loads(out.strip().splitlines()[-1])
    stages = [r["stage"] for r in summary["stages"]]  # in the order they ran
    first_stage = min((w[0] for w in windows.values()), default=started)
    return {
        "wall": wall,
        "before_first_stage": first_stage - started,
        "summary": summary,
        "stages": {
            s: {
                "seconds": next(r["seconds"] for r in summary["stages"] if r["stage"] == s),
                "peak_mb": peaks(sampler.samples, *windows[s]),
            }
            for s in stages
            if s in windows
        },
        "peak_mb": peaks(sampler.samples, started, time.perf_counter()),
    }


def peaks(samples: list[tuple[float, int, str, int]], start: float, end: float) -> dict[str, int]:
    """The largest RSS (MB) in [start, end] of the flow process, of any Dask worker, and of any process."""
    out: dict[str, int] = {"flow": 0, "dask-worker": 0, "any": 0}
    for when, _, name, rss in samples:
        if start - 0.2 <= when <= end + 0.2:
            mb = round(rss / 2**20)
            out["any"] = max(out["any"], mb)
            if name in out:
                out[name] = max(out[name], mb)
    return out


def measure(size: str, workers: int, root: Path) -> dict[str, Any]:
    home = root / f"home-{size}-{workers}"
    extra = {
        "FUSION_PIPELINE__DASK__N_WORKERS": str(workers),
        "FUSION_PIPELINE__DASK__THREADS_PER_WORKER": str(2 // workers),
        "FUSION_PIPELINE__DASK__PROCESSES": "true",
    }
    if size != "real":
        data = root / f"data-{size}"
        if not data.exists():
            generate = [str(Path(sys.executable).parent / "fusion"), "generate", "flights", "--rows", size]
            subprocess.run([*generate, "--out", str(data)], cwd=REPO, check=True, capture_output=True)
        for table in TABLES:
            extra[f"FUSION_DATASET__SOURCE__TABLES__{table.upper()}__URI"] = str(data / f"{table}.parquet")
    result = run_once(clean_env(home, **extra))
    shutil.rmtree(home, ignore_errors=True)
    result |= {"size": size, "workers": workers, "rows": result["summary"]["rows_ingested"]}
    return result


def report(results: list[dict[str, Any]], when: str, where: str, plot: str | None) -> str:
    stages = list(dict.fromkeys(s for r in results for s in r["stages"]))
    lines = [
        "## Scale: the whole pipeline at 336,776, 1M and 10M rows (`make bench-scale`)",
        "",
        f"Measured {when} on {where}. Command: `{COMMAND}`. `fusion run` of configs/flights.yaml on the real",
        "tables and on `fusion generate flights` tables, fresh home, cache off, Dask worker processes",
        "(1 worker x 2 threads: plain LightGBM; 2 workers x 1 thread: LightGBM on Dask reading the lake). Peak RSS",
        "in MB: flow = the `fusion run` process, worker = the largest Dask worker, sampled every 0.2 s.",
        "",
        "| rows | workers | wall (s) | before first stage (s) | "
        + " | ".join(stages)
        + " | peak RSS flow / worker / any (MB) | test AUC |",
        "|---:|---:|---:|---:|" + "---:|" * len(stages) + "---|---:|",
    ]
    for r in results:
        cells = [
            f"{r['stages'][s]['seconds']:.1f} ({r['stages'][s]['peak_mb']['any']:,})" if s in r["stages"] else "-"
            for s in stages
        ]
        peak = r["peak_mb"]
        auc = r["summary"]["metrics"].get("test_auc")
        lines.append(
            f"| {r['rows']:,} | {r['workers']} | {r['wall']:.1f} | {r['before_first_stage']:.1f} | "
            + " | ".join(cells)
            + f" | {peak['flow']:,} / {peak['dask-worker']:,} / {peak['any']:,} | {auc:.4f} |"
        )
    lines += ["", "Stage cells: seconds (largest RSS of any process during the stage, MB)."]
    base = {r["workers"]: r for r in results if r["size"] == "real"}
    for r in results:
        if r["size"] != "real" and r["workers"] in base:
            b = base[r["workers"]]
            lines.append(
                f"- {r['rows']:,} rows, {r['workers']} worker(s): {r['rows'] / b['rows']:.1f}x the rows,"
                f" {r['wall'] / b['wall']:.2f}x the wall time of the real table's run (target: at most 30x)"
            )
    largest = max(r["peak_mb"]["any"] for r in results)
    lines.append(f"- largest process at any size: {largest:,} MB (target: at most 8 GB)")
    if plot:
        lines += ["", f"![time and memory against rows]({plot})"]
    return "\n".join(lines) + "\n"


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    series = ["wall", "validate", "features", "train", "evaluate"]
    colors = dict(zip(series, plt.rcParams["axes.prop_cycle"].by_key()["color"], strict=False))
    for workers in sorted({r["workers"] for r in results}):
        mine = sorted((r for r in results if r["workers"] == workers), key=lambda r: r["rows"])
        rows = [r["rows"] for r in mine]
        style = "-" if workers == 1 else "--"
        label = f"{workers} worker{'s' if workers > 1 else ''}"
        for name in series:
            seconds = [r["wall"] if name == "wall" else r["stages"].get(name, {}).get("seconds", 0) for r in mine]
            left.plot(rows, seconds, ls=style, marker="o", color=colors[name], label=f"{name}, {label}")
        right.plot(rows, [r["peak_mb"]["any"] for r in mine], ls=style, marker="o", label=f"largest process, {label}")
    for ax, title in ((left, "seconds"), (right, "peak RSS (MB)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("rows")
        ax.set_title(title)
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="real,1000000,10000000")
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--write", type=Path, help="update this BENCHMARKS.md (and write scale.png beside it)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="fusion-scale-"))
    results = []
    try:
        for size in args.sizes.split(","):
            for workers in (int(w) for w in args.workers.split(",")):
                results.append(measure(size.strip(), workers, root))
                r = results[-1]
                print(json.dumps({k: v for k, v in r.items() if k != "summary"}), flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    image = None
    if args.write:
        plot(results, args.write.parent / "scale.png")
        image = "scale.png"
    section = report(results, dt.date.today().isoformat(), machine(), image)
    print(section)
    if args.write:
        write_section(args.write, section)


if __name__ == "__main__":
    main()
