"""LightGBM on 2 Dask worker processes (data-parallel) vs plain LightGBM in one process, on the same flights features.

`make bench-dask-train`: for each size (the real 336,776 flights, then generated ones), the feature table
is built once and written to a lake folder; then, from that URI to a trained model, each path is timed:

- plain: one process reads the table, splits it and trains LightGBM with 2 threads (the single-worker path);
- dask: a LocalCluster of 2 worker processes x 1 thread (started before the clock), the workers
  reading and splitting their own rows (tasks/dask_train.py), early stopping on the whole valid split.

Each path runs `--repeats` times (`--large-repeats` above 1M rows), in pairs of a plain and a dask run back to
back, alternating which goes first; the time ratio is the median of the pairs' ratios (this VM's speed moves
by up to 2x within minutes: a pair's two runs share a minute). Both score the same test split. Peak RSS is
sampled every 0.1 s for this process and each worker (the largest over the runs).
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import psutil
from sklearn.metrics import roc_auc_score

from benchmarks.pipeline import machine, write_section
from fusion.core.lake import Lake
from fusion.core.settings import DatasetConfig, load_settings
from tasks.dask_train import train_lightgbm_from_lake
from tasks.features import FeatureSet, build_features, categorical_names, feature_names
from tasks.generate import generate_flights
from tasks.ingest import enforce_schema, parse_table, read_source_bytes
from tasks.train import split_frames, train_lightgbm

CONFIG = "configs/flights.yaml"
COMMAND = "make bench-dask-train"


@contextmanager
def peak_rss(pids: list[int]) -> Iterator[dict[int, int]]:
    """The largest RSS of each process while the block runs (bytes), sampled every 0.1 s."""
    peaks = dict.fromkeys(pids, 0)
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            for pid in pids:
                with suppress(psutil.NoSuchProcess):
                    peaks[pid] = max(peaks[pid], psutil.Process(pid).memory_info().rss)
            done.wait(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield peaks
    finally:
        done.set()
        sampler.join()


def feature_table(size: str, dataset: DatasetConfig, folder: Path) -> FeatureSet:
    """The flights features of the real tables ("real") or of `size` generated rows, written to `folder`."""
    sources = dataset.source.tables
    if size == "real":
        uris = {name: cfg.uri for name, cfg in sources.items()}
    else:
        generate_flights(int(size), folder, seed=1)
        uris = {name: str(folder / f"{name}.parquet") for name in sources}
    tables = {
        name: enforce_schema(parse_table(read_source_bytes(uris[name]), uris[name], name, cfg), name, cfg)
        for name, cfg in sources.items()
    }
    frame = build_features(tables, dataset.source.primary, dataset.features, dataset.prediction_time, dataset.target)
    path = str(folder / "features.parquet")
    Lake(str(folder)).write_parquet(frame, path)
    names = feature_names(dataset.features)
    return FeatureSet(
        dataset.name, "bench", path, frame.height, names, categorical_names(frame, names), dataset.target.name, 1
    )


def compare(size: str, dataset: DatasetConfig, client: Any, worker_pids: list[int], repeats: int) -> dict[str, Any]:
    """Each path `repeats` times, in pairs back to back, alternating which goes first (plain, dask, then dask,
    plain, ...: this VM's speed moves by up to 2x within minutes, and drift falls on both alike); the figure is
    the median of the pairs' ratios, the fastest run of each path beside it."""
    with tempfile.TemporaryDirectory(prefix="fusion-bench-dask-") as tmp:
        folder = Path(tmp)
        table = feature_table(size, dataset, folder)
        lake = Lake(str(folder))
        result: dict[str, Any] = {"rows": table.rows}
        trained: dict[str, Any] = {}
        runs: dict[str, list[float]] = {"plain": [], "dask": []}
        peaks: dict[str, list[int]] = {}
        test = None
        for i in range(repeats):
            for way in ("plain", "dask") if i % 2 == 0 else ("dask", "plain"):
                pids = [psutil.Process().pid] + (worker_pids if way == "dask" else [])
                with peak_rss(pids) as peak:
                    started = time.perf_counter()
                    if way == "plain":
                        parts = split_frames(lake.read_parquet(table.path), dataset)
                        args = (parts, table.feature_columns, table.categorical_columns, table.target, dataset.model)
                        trained[way] = train_lightgbm(*args, threads=2)
                    else:
                        trained[way] = train_lightgbm_from_lake(client, lake, table, dataset)
                    runs[way].append(time.perf_counter() - started)
                if way == "plain":
                    test = parts.test
                    del parts
                found = [round(v / 2**20) for v in peak.values()]
                peaks[way] = [max(a, b) for a, b in zip(peaks.get(way, found), found, strict=True)]
                client.run(lambda: __import__("gc").collect())
        assert test is not None
        y = test.get_column(table.target).to_numpy()
        config = dataset.model
        for way, model in trained.items():
            rounds = min(model.best_iteration + config.early_stopping_rounds, config.num_boost_round)
            result[way] = {
                "seconds": min(runs[way]),
                "runs": runs[way],
                "rounds_run": rounds,
                "best_iteration": model.best_iteration,
                "valid_auc": model.valid_auc,
                "test_auc": float(roc_auc_score(y, model.model.predict_frame(test))),
                "peak_rss_mb": peaks[way],
                "engine": model.engine,
            }
        result["same_split"] = trained["plain"].split == trained["dask"].split
        result["pair_ratios"] = [d / p for p, d in zip(runs["plain"], runs["dask"], strict=True)]
        result["ratio"] = float(statistics.median(result["pair_ratios"]))
        return result


def report(results: list[dict[str, Any]], when: str, where: str) -> str:
    repeats = max((len(r["plain"]["runs"]) for r in results), default=0)
    lines = [
        "## Distributed training: LightGBM on Dask workers vs one process (`make bench-dask-train`)",
        "",
        f"Measured {when} on {where}. Command: `{COMMAND}`. Flights features ({CONFIG}, time split), from the",
        "feature table's URI to a trained model. plain: one process reads, splits and trains LightGBM with 2",
        "threads. dask: 2 worker processes x 1 thread (cluster started before the clock), each reading",
        "and splitting its own rows, early stopping on the whole valid split (tasks/dask_train.py). Both with",
        "the config's 2000 rounds / stop after 100. Peak RSS: plain = the process; dask = driver, worker 1, worker 2.",
        f"Each path run {repeats} times (fewer at the largest sizes: the runs column), in pairs back to back,",
        "alternating which goes first: the time ratio is the median of the pairs' ratios (every pair listed);",
        "plain and dask (s) are each path's fastest run. Rounds run = best round + the patience; s / round =",
        "fastest run / rounds run (reading and splitting included): a time ratio is the rounds' ratio times the",
        "per-round ratio.",
        "",
        "| rows | plain (s) | dask (s) | time ratio (median of pairs) | pairs' ratios | runs plain / dask (s)"
        " | rounds run plain / dask"
        " | s / round plain / dask | best round plain / dask | test AUC plain | test AUC dask"
        " | AUC difference | peak RSS plain (MB) | peak RSS dask (MB) | same split |",
        "|---:|---:|---:|---:|---|---|---|---|---|---:|---:|---:|---:|---|---|",
    ]
    for r in results:
        p, d = r["plain"], r["dask"]
        runs = " / ".join(", ".join(f"{t:.1f}" for t in x["runs"]) for x in (p, d))
        per_round = " / ".join(f"{x['seconds'] / x['rounds_run']:.3f}" for x in (p, d))
        lines.append(
            f"| {r['rows']:,} | {p['seconds']:.1f} | {d['seconds']:.1f} | **{r['ratio']:.2f}x**"
            f" | {', '.join(f'{x:.2f}' for x in r['pair_ratios'])} | {runs}"
            f" | {p['rounds_run']} / {d['rounds_run']} | {per_round}"
            f" | {p['best_iteration']} / {d['best_iteration']} | {p['test_auc']:.4f} | {d['test_auc']:.4f}"
            f" | {d['test_auc'] - p['test_auc']:+.4f} | {p['peak_rss_mb'][0]:,}"
            f" | {' / '.join(f'{m:,}' for m in d['peak_rss_mb'])} | {'yes' if r['same_split'] else 'NO'} |"
        )
    if results:
        ratios = ", ".join(f"**{r['ratio']:.2f}x** at {r['rows']:,}" for r in results)
        gaps = ", ".join(f"{abs(r['dask']['test_auc'] - r['plain']['test_auc']):.4f}" for r in results)
        lines += [
            "",
            f"Targets (issue 16): time ratio <= 1.3x at every size: {ratios}; test AUC within 0.002: {gaps}.",
        ]
    return "\n".join(lines) + "\n"


PER_ROUND = {  # name: (extra LightGBM params, threads in one process; None = data-parallel on the 2 Dask workers)
    "one process, 1 thread": ({}, 1),
    "one process, 2 threads": ({}, 2),
    "Dask 2x1 (LightGBM's choice: col-wise)": ({}, None),
    "Dask 2x1, force_row_wise": ({"force_row_wise": True}, None),
}


def per_round(size: str, dataset: DatasetConfig, client: Any) -> str:
    """Seconds per boosting round (read, split and fit over rounds run: best + early_stopping_rounds) of
    each way in PER_ROUND, on one feature table: how much of the second core each way uses."""
    lines = [
        '## Distributed training: seconds per round (`make bench-dask-train ARGS="--per-round --sizes real"`)',
        "",
        f"Measured {dt.date.today().isoformat()} on {machine()}. Command:"
        ' `make bench-dask-train ARGS="--per-round --sizes real"`. The',
        f"{size} table's features, from the URI to a trained model; rounds run = best round + the early-stopping",
        "patience. Speed-up: over one process with 1 thread, per round.",
        "",
        "| way | seconds | rounds run | s / round | speed-up |",
        "|---|---:|---:|---:|---:|",
    ]
    with tempfile.TemporaryDirectory(prefix="fusion-bench-rounds-") as tmp:
        folder = Path(tmp)
        table = feature_table(size, dataset, folder)
        lake = Lake(str(folder))
        single = None
        for name, (extra, threads) in PER_ROUND.items():
            model = dataset.model.model_copy(update={"params": {**dataset.model.params, **extra}})
            ds = dataset.model_copy(update={"model": model})
            started = time.perf_counter()
            if threads is None:
                trained = train_lightgbm_from_lake(client, lake, table, ds)
            else:
                parts = split_frames(lake.read_parquet(table.path), ds)
                args = (parts, table.feature_columns, table.categorical_columns, table.target, ds.model)
                trained = train_lightgbm(*args, threads=threads)
            seconds = time.perf_counter() - started
            rounds = trained.best_iteration + ds.model.early_stopping_rounds
            single = single or seconds / rounds
            lines.append(
                f"| {name} | {seconds:.1f} | {rounds} | {seconds / rounds:.4f} | {single / (seconds / rounds):.2f}x |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="real,1000000,3000000", help="'real' and/or generated row counts")
    parser.add_argument("--write", type=Path, help="update this BENCHMARKS.md")
    parser.add_argument("--repeats", type=int, default=4, help="pairs of a plain and a dask run; median of ratios")
    parser.add_argument("--large-repeats", type=int, default=2, help="pairs at sizes above 1M rows")
    parser.add_argument("--per-round", action="store_true", help="seconds per round of each way, on the first size")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("distributed").setLevel(logging.WARNING)
    dataset = load_settings(CONFIG).dataset
    from distributed import Client, LocalCluster

    results = []
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):
        if args.per_round:
            section = per_round(args.sizes.split(",")[0], dataset, client)
            print(section)
            if args.write:
                write_section(args.write, section)
            return
        worker_pids = [int(pid) for pid in client.run(lambda: __import__("os").getpid()).values()]
        for size in args.sizes.split(","):
            large = size.strip() != "real" and int(size) > 1_000_000
            repeats = args.large_repeats if large else args.repeats
            results.append(compare(size.strip(), dataset, client, worker_pids, repeats))
            print(results[-1], flush=True)
    section = report(results, dt.date.today().isoformat(), machine())
    print(section)
    if args.write:
        write_section(args.write, section)


if __name__ == "__main__":
    main()
