"""Model families on the flights features, one split, one process.

`make bench-models`: LightGBM, the torch MLP and `best` (the better valid AUC), with a blend of the two
whose weight is chosen on the valid split only; test AUC and fit time on this machine's CPU.

`make device-check`: torch on CUDA and on CPU with the same epochs (no early stop), printing rows/s,
test AUC and peak GPU memory for each, and writing its own section. Without a CUDA device it runs the CPU
part, says "no CUDA device" and exits 0 without writing.
"""

from __future__ import annotations

import argparse
import datetime as dt
import time
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

from benchmarks.pipeline import machine, write_section
from fusion.core.settings import load_settings
from tasks.families import choose_best, train_torch
from tasks.features import build_features, categorical_names, feature_names
from tasks.ingest import enforce_schema, parse_table, read_source_bytes
from tasks.torch_model import fit_torch
from tasks.train import SplitFrames, split_frames, train_lightgbm

CONFIG = "configs/flights.yaml"


def flights_split() -> tuple[Any, SplitFrames, list[str], list[str]]:
    settings = load_settings(CONFIG)
    dataset = settings.dataset
    tables = {
        name: enforce_schema(parse_table(read_source_bytes(cfg.uri), cfg.uri, name, cfg), name, cfg)
        for name, cfg in dataset.source.tables.items()
    }
    frame = build_features(tables, dataset.source.primary, dataset.features, dataset.prediction_time, dataset.target)
    names = feature_names(dataset.features)
    return dataset, split_frames(frame, dataset), names, categorical_names(frame, names)


def auc(parts: SplitFrames, target: str, p: np.ndarray, part: str = "test") -> float:
    return float(roc_auc_score(getattr(parts, part)[target].to_numpy(), p))


def families(threads: int) -> str:
    dataset, parts, names, categorical = flights_split()
    target = dataset.target.name
    gbm = train_lightgbm(parts, names, categorical, target, dataset.model, threads)
    net = train_torch(parts, names, categorical, target, dataset, "cpu", threads)
    best = choose_best(gbm, net)
    p = {"lightgbm": gbm.model.predict_frame(parts.test), "torch": net.model.predict_frame(parts.test)}
    v = {"lightgbm": gbm.model.predict_frame(parts.valid), "torch": net.model.predict_frame(parts.valid)}
    # the blend's weight on torch, chosen on valid only, then scored once on test
    weights = np.round(np.linspace(0, 1, 21), 2)
    valid_blend = [auc(parts, target, (1 - w) * v["lightgbm"] + w * v["torch"], "valid") for w in weights]
    w = float(weights[int(np.argmax(valid_blend))])
    blend_test = auc(parts, target, (1 - w) * p["lightgbm"] + w * p["torch"])
    rows = [
        ("LightGBM", gbm.valid_auc, auc(parts, target, p["lightgbm"]), gbm.fit_seconds),
        ("torch MLP (CPU)", net.valid_auc, auc(parts, target, p["torch"]), net.fit_seconds),
        (
            f"best → {best.family}",
            best.valid_auc,
            auc(parts, target, p[best.family]),
            gbm.fit_seconds + net.fit_seconds,
        ),
        (
            f"blend, torch weight {w:.2f} (chosen on valid)",
            max(valid_blend),
            blend_test,
            gbm.fit_seconds + net.fit_seconds,
        ),
    ]
    torch_config = dataset.model.torch
    lines = [
        "## Model families (`make bench-models`)",
        "",
        f"Measured {dt.date.today().isoformat()} on {machine()}.",
        f"Command: `make bench-models`. Data: all {sum(parts.sizes().values()):,} flights, the default config's"
        f" time split ({parts.sizes()['train']:,} train / {parts.sizes()['valid']:,} valid /"
        f" {parts.sizes()['test']:,} test rows), {len(names)} features ({len(categorical)} categorical), one process,"
        f" {threads} threads each. torch: {torch_config.n_blocks} residual blocks of {torch_config.d_block}"
        f" (inner {torch_config.d_hidden}), embeddings of {torch_config.d_embedding}, batch {torch_config.batch_size},"
        f" up to {torch_config.max_epochs} epochs (ran {net.params['epochs_run']}, kept epoch {net.best_iteration}),"
        f" {net.params['rows_per_second']:,} training rows/s. Fit time is from the prepared split to the"
        " model (torch's preprocessing included, its import not). `best` and the blend decide on the valid"
        " split only; the test split only reports.",
        "",
        "| model | valid AUC | test AUC | fit (s) |",
        "|---|---:|---:|---:|",
        *[f"| {name} | {va:.4f} | {ta:.4f} | {fit:.1f} |" for name, va, ta, fit in rows],
        "",
        f"torch / LightGBM fit time: **{net.fit_seconds / gbm.fit_seconds:.2f}x** (target ≤ 3x); torch test AUC"
        f" **{rows[1][2]:.4f}** (target ≥ 0.75). The blend, its weight chosen on valid, scores"
        f" {blend_test - rows[0][2]:+.4f} test AUC against LightGBM alone: "
        + (
            "a gain worth offering as a family."
            if blend_test > rows[0][2]
            else "no gain (valid prefers it, test does not), so Fusion ships no blend."
        ),
        "",
    ]
    return "\n".join(lines)


def device_check(epochs: int, threads: int) -> tuple[str, bool]:
    import torch

    dataset, parts, names, categorical = flights_split()
    target = dataset.target.name
    config = dataset.model.torch.model_copy(update={"max_epochs": epochs, "patience": epochs})
    devices = ["cuda", "cpu"] if torch.cuda.is_available() else ["cpu"]
    results = []
    for device in devices:
        started = time.perf_counter()
        fit = fit_torch(
            parts.train,
            parts.valid,
            names,
            categorical,
            target,
            config,
            dataset.model.min_category_count,
            device,
            threads,
        )
        test_auc = auc(parts, target, fit.model.predict_frame(parts.test))  # the registered model: CPU
        peak = f"{fit.peak_gpu_bytes / 2**20:.0f}" if fit.peak_gpu_bytes is not None else "-"
        results.append((device, fit.rows_per_second, test_auc, peak, time.perf_counter() - started))
        print(f"{device}: {fit.rows_per_second:,.0f} rows/s, test AUC {test_auc:.4f}, peak GPU memory {peak} MiB")
    if "cuda" not in devices:
        print("no CUDA device: ran the CPU part only; BENCHMARKS.md unchanged")
        return "", False
    name = torch.cuda.get_device_name(0)
    speedup = results[0][1] / results[1][1]
    lines = [
        "## Torch on GPU (`make device-check`)",
        "",
        f"Measured {dt.date.today().isoformat()} on {name} (CUDA {torch.version.cuda}, torch {torch.__version__}),"
        f" host {machine()}.",
        f"Command: `make device-check`. Data: the flights features and split of `make bench-models`; {epochs} epochs"
        f" on each device (no early stop), CPU with {threads} threads; CUDA in bfloat16 autocast. Test AUC of the"
        " model as registered (predicting on CPU in float32).",
        "",
        "| device | training rows/s | test AUC | peak GPU memory (MiB) | whole fit (s) |",
        "|---|---:|---:|---:|---:|",
        *[f"| {d} | {r:,.0f} | {a:.4f} | {m} | {s:.1f} |" for d, r, a, m, s in results],
        "",
        f"CUDA / CPU training throughput: **{speedup:.1f}x**.",
        "",
    ]
    return "\n".join(lines), True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device-check", action="store_true")
    parser.add_argument("--epochs", type=int, default=3, help="device check: epochs on each device")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--write", type=Path, help="update this BENCHMARKS.md")
    args = parser.parse_args()
    if args.device_check:
        section, measured = device_check(args.epochs, args.threads)
    else:
        section, measured = families(args.threads), True
    if measured:
        print(section)
        if args.write:
            write_section(args.write, section)


if __name__ == "__main__":
    main()
