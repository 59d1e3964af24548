"""Torch training placed by Dask resources, on real clusters of worker processes (no GPU needed): a worker
that declares GPU=1 gets the work, and a config that needs a GPU no worker offers fails at once."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from fusion.core.errors import TrainingError
from fusion.core.lake import Lake
from fusion.core.settings import DatasetConfig, load_settings
from tasks.families import GPU, torch_on_cluster, train_family
from tasks.features import FeatureSet, build_features, categorical_names, feature_names
from tests.datasets.applicants import generate

pytestmark = pytest.mark.integration

EXAMPLE = Path(__file__).resolve().parents[2] / "configs" / "examples" / "applicants.yaml"


@dataclass(frozen=True)
class Placed:
    """The example's feature table in a lake, and its dataset config."""

    lake: Lake
    table: FeatureSet
    dataset: DatasetConfig

    def with_model(self, **changes: Any) -> Placed:
        model = self.dataset.model.model_copy(update=changes)
        return Placed(self.lake, self.table, self.dataset.model_copy(update={"model": model}))


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> Placed:
    """The applicants example's feature table (4,000 generated rows) in a lake, with a small, short torch
    config: where the work runs is under test, not the model."""
    dataset = load_settings(EXAMPLE).dataset
    small = dataset.model.torch.model_copy(update={"d_block": 16, "d_hidden": 32, "n_blocks": 1, "max_epochs": 2})
    dataset = dataset.model_copy(update={"model": dataset.model.model_copy(update={"torch": small, "family": "torch"})})
    frame = build_features(
        {"applicants": generate(4000)}, "applicants", dataset.features, dataset.prediction_time, dataset.target
    )
    lake = Lake(str(tmp_path_factory.mktemp("placement") / "lake"))
    path = lake.write_parquet(frame, lake.path("features", "applicants", "b1", "features.parquet"))
    names = feature_names(dataset.features)
    table = FeatureSet(
        "applicants", "b1", path, frame.height, names, categorical_names(frame, names), "will_default", 1
    )
    return Placed(lake, table, dataset)


@contextmanager
def cluster(workers: dict[str, dict[str, float]]) -> Iterator[Any]:
    """A scheduler and one worker process (a nanny's) per name, declaring the given resources."""
    from distributed import Client, Nanny, Scheduler, SpecCluster

    spec = {
        name: {"cls": Nanny, "options": {"nthreads": 1, **({"resources": r} if r else {})}}
        for name, r in workers.items()
    }
    with (
        SpecCluster(workers=spec, scheduler={"cls": Scheduler, "options": {"dashboard_address": ":0"}}) as specs,
        Client(specs) as client,
    ):
        client.wait_for_workers(len(workers), timeout=120)
        yield client


def test_torch_training_runs_on_the_worker_that_offers_a_gpu(table: Placed) -> None:
    cuda = table.with_model(device="cuda")
    with cluster({"plain": {}, "gpu": {GPU: 1}}) as client:
        workers = client.scheduler_info(n_workers=-1)["workers"]
        gpu_worker = next(a for a, w in workers.items() if w.get("resources", {}).get(GPU))
        # three at once: unplaced, a two-worker cluster would spread them; placed, all three go to the GPU
        futures = [torch_on_cluster(client, cuda.lake, cuda.table, cuda.dataset, 1, run_device="cpu") for _ in range(3)]
        trained = [f.result() for f in futures]
    assert [t.worker for t in trained] == [gpu_worker] * 3  # get_worker().address, taken inside the task
    assert {t.device for t in trained} == {"cpu"}  # forced: this machine has no CUDA device
    assert trained[0].device_reason == f"Dask resource {GPU} offered by 1 worker(s)"
    assert trained[0].engine == "torch (cpu)" and 0.5 < trained[0].valid_auc <= 1


def test_a_config_that_needs_a_gpu_fails_at_once_on_a_cluster_without_one(table: Placed) -> None:
    cuda = table.with_model(device="cuda")
    with cluster({"a": {}, "b": {}}) as client:
        started = time.monotonic()
        with pytest.raises(TrainingError, match=rf"no Dask worker offers the resource {GPU} \(2 worker\(s\)"):
            train_family(cuda.lake, cuda.table, cuda.dataset, 1, client, 2)
        assert time.monotonic() - started < 10
        # auto on the same cluster: CPU, and the model says why
        auto = table.with_model(device="auto")
        trained = train_family(auto.lake, auto.table, auto.dataset, 1, client, 2)
    assert trained.device == "cpu" and trained.family == "torch"
    assert trained.device_reason == f"model.device auto: no Dask worker offers {GPU}, trained on CPU"
    assert trained.worker is not None
