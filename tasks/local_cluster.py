"""The Dask LocalCluster a run starts on this machine: its workers, threads, processes, the GPU resource
and the stage code its worker processes preload. Light to import (no model or data libraries), so that
`fusion run` can start the cluster beside its own imports (fusion/runtime.py `start_local_cluster`)."""

from __future__ import annotations

import os
import shutil
import subprocess  # nosec B404  # nvidia-smi -L only, argv list, no shell
from typing import Any

from fusion.core.settings import DaskConfig

GPU = "GPU"  # the Dask resource a worker declares per CUDA device
STAGE_CODE = "tasks.pipeline_tasks"  # the module the flow's stages come from (flows/training_pipeline.py)


def visible_gpus() -> int:
    """CUDA devices this process may use, without importing torch (seconds): CUDA_VISIBLE_DEVICES when
    set, else the GPUs `nvidia-smi -L` lists, else 0."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        devices = [d.strip() for d in listed.split(",") if d.strip()]
        return 0 if not devices or devices[0].startswith("-") else len(devices)
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return 0
    try:
        # nvidia-smi as PATH finds it, a fixed argument, no shell
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10, check=False).stdout  # nosec B603
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


def worker_resources() -> dict[str, float]:
    """What a LocalCluster worker declares: GPU=<visible CUDA devices> when there are any."""
    gpus = visible_gpus()
    return {GPU: float(gpus)} if gpus else {}


def local_cluster_kwargs(config: DaskConfig) -> dict[str, Any]:
    """`distributed.LocalCluster`'s arguments for `pipeline.dask`."""
    import dask.config

    kwargs: dict[str, Any] = {
        "n_workers": config.n_workers,
        "threads_per_worker": config.threads_per_worker,
        "processes": config.processes,
        "dashboard_address": ":0",  # None still binds 8787
        # GPU=<CUDA devices seen here>: torch training asks for GPU=1 (tasks/families.py)
        **({"resources": resources} if (resources := worker_resources()) else {}),
    }
    if config.processes:
        # Worker processes import the stages' code as they start, side by side, rather than each on its
        # first task (one after another: the second worker's first task is a later stage's)
        kwargs["preload"] = [*dask.config.get("distributed.worker.preload", []), STAGE_CODE]
    return kwargs
