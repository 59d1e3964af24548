"""Model families (`model.family: lightgbm | torch | best`) and where torch trains.

Torch training is Dask work of its own: submitted with the resource `{"GPU": 1}` when it needs a GPU,
so the scheduler places it on a worker that declares one (`dask worker --resources GPU=1`; Fusion's
LocalCluster declares the CUDA devices it sees). Dask waits forever for a resource no worker has, so
the cluster is asked first: `model.device: cuda` with no GPU worker fails at once naming the resource,
and `auto` trains on CPU and says so.
"""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass, replace
from typing import Any

from fusion.core.errors import TrainingError
from fusion.core.lake import Lake
from fusion.core.settings import DatasetConfig
from tasks.dask_train import train_lightgbm_from_lake
from tasks.features import FeatureSet
from tasks.local_cluster import GPU
from tasks.train import SplitFrames, TrainedModel, split_frames, train_lightgbm


@dataclass(frozen=True)
class Placement:
    device: str  # what torch trains on: "cpu" or "cuda"
    resources: dict[str, float] | None  # what the Dask task asks for
    reason: str


def gpu_workers(client: Any) -> dict[str, float]:
    """Workers that declare the resource GPU, with how many."""
    workers = client.scheduler_info(n_workers=-1)["workers"]
    return {
        address: w.get("resources", {}).get(GPU, 0)
        for address, w in workers.items()
        if w.get("resources", {}).get(GPU, 0) >= 1
    }


def place_torch(device: str, client: Any | None) -> Placement:
    """Where torch trains for `model.device`, given the cluster (None: no Dask, this process)."""
    if device == "cpu":
        return Placement("cpu", None, "model.device cpu")
    if client is None:
        import torch

        if torch.cuda.is_available():
            return Placement("cuda", None, "CUDA in this process (no Dask cluster)")
        if device == "cuda":
            raise TrainingError("model.device is cuda but there is no Dask cluster and torch sees no CUDA device here")
        return Placement("cpu", None, "model.device auto: no CUDA device here, trained on CPU")
    offering = gpu_workers(client)
    if offering:
        return Placement("cuda", {GPU: 1}, f"Dask resource {GPU} offered by {len(offering)} worker(s)")
    if device == "cuda":
        workers = client.scheduler_info(n_workers=-1)["workers"]
        declared = {a: w.get("resources", {}) for a, w in workers.items()}
        raise TrainingError(
            f"model.device is cuda but no Dask worker offers the resource {GPU} ({len(declared)} worker(s), "
            f"resources {declared}): start a worker with `dask worker <scheduler> --resources {GPU}=1`, "
            "or set model.device to auto or cpu"
        )
    return Placement("cpu", None, f"model.device auto: no Dask worker offers {GPU}, trained on CPU")


def train_torch(
    parts: SplitFrames,
    features: list[str],
    categorical: list[str],
    target: str,
    dataset: DatasetConfig,
    device: str,
    threads: int,
) -> TrainedModel:
    from tasks.torch_model import fit_torch

    fit = fit_torch(
        parts.train,
        parts.valid,
        features,
        categorical,
        target,
        dataset.model.torch,
        dataset.model.min_category_count,
        device=device,
        threads=threads,
    )
    return TrainedModel(
        model=fit.model,
        best_iteration=fit.best_epoch,
        valid_auc=fit.valid_auc,
        engine=f"torch ({device})",
        fit_seconds=fit.fit_seconds,
        split_sizes=parts.sizes(),
        params={
            **dataset.model.torch.model_dump(),
            "epochs_run": fit.epochs,
            "rows_per_second": round(fit.rows_per_second),
        },
        split=parts.record,
        device=device,
    )


def train_torch_task(
    lake: Lake, table: FeatureSet, dataset: DatasetConfig, device: str, reason: str, threads: int
) -> TrainedModel:
    """The Dask task: reads the feature table from the lake (no frames through the scheduler), splits it
    as the flow does and trains; says which worker it ran on and why on that device."""
    try:
        from distributed import get_worker

        worker: str | None = get_worker().address
    except (ImportError, ValueError):
        worker = None
    parts = split_frames(lake.read_parquet(table.path), dataset)
    trained = train_torch(
        parts, table.feature_columns, table.categorical_columns, table.target, dataset, device, threads
    )
    return replace(trained, worker=worker, device_reason=reason)


def torch_on_cluster(
    client: Any | None,
    lake: Lake,
    table: FeatureSet,
    dataset: DatasetConfig,
    threads: int,
    run_device: str | None = None,
) -> Any:
    """Submit torch training where `model.device` says; returns its future (without Dask, one already
    done). `run_device` replaces the device torch itself uses, not where the task is placed (the
    placement tests force cpu on a worker that declares a GPU)."""
    placement = place_torch(dataset.model.device, client)
    args = (lake, table, dataset, run_device or placement.device, placement.reason, threads)
    if client is not None:
        return client.submit(train_torch_task, *args, resources=placement.resources, pure=False)
    done: Future[TrainedModel] = Future()
    done.set_result(train_torch_task(*args))
    return done


def choose_best(gbm: TrainedModel, net: TrainedModel) -> TrainedModel:
    """The family with the better valid AUC (a tie keeps LightGBM), with both AUCs recorded."""
    winner = net if net.valid_auc > gbm.valid_auc else gbm
    return replace(winner, candidates={"lightgbm": gbm.valid_auc, "torch": net.valid_auc})


def train_in_process(
    parts: SplitFrames, features: list[str], categorical: list[str], target: str, dataset: DatasetConfig, threads: int
) -> TrainedModel:
    """`model.family` on frames in this process (a notebook): torch on CUDA when `model.device` allows
    and this process sees a device."""
    family = dataset.model.family
    gbm = train_lightgbm(parts, features, categorical, target, dataset.model, threads) if family != "torch" else None
    if family == "lightgbm":
        assert gbm is not None
        return gbm
    placement = place_torch(dataset.model.device, None)
    net = replace(
        train_torch(parts, features, categorical, target, dataset, placement.device, threads),
        device_reason=placement.reason,
    )
    return net if gbm is None else choose_best(gbm, net)


def train_family(
    lake: Lake, table: FeatureSet, dataset: DatasetConfig, threads: int, client: Any | None, workers: int
) -> TrainedModel:
    """Train `model.family`: LightGBM here (with several workers lightgbm.dask, the workers reading the
    table from the lake: tasks/dask_train.py), torch as Dask work placed
    by `model.device`; `best` trains both on the same split and keeps the better valid AUC (the test
    split never decides)."""
    family = dataset.model.family
    torch_future = torch_on_cluster(client, lake, table, dataset, threads) if family in ("torch", "best") else None
    if family == "torch":
        assert torch_future is not None
        return torch_future.result()  # type: ignore[no-any-return]
    if client is not None and workers > 1:
        gbm = train_lightgbm_from_lake(client, lake, table, dataset)
    else:
        # the test split stays on disk: evaluate reads it; training holds only what it fits on
        parts = split_frames(lake.read_parquet(table.path), dataset, keep=("train", "valid"))
        args = (parts, table.feature_columns, table.categorical_columns, table.target, dataset.model)
        gbm = train_lightgbm(*args, threads=threads)
    if torch_future is None:
        return gbm
    return choose_best(gbm, torch_future.result())
