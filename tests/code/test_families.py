"""Choosing a family and a device: pure decisions, with the cluster's answer given as data."""

from __future__ import annotations

from typing import Any

import pytest

from fusion.cli import family_line
from fusion.core.errors import TrainingError
from fusion.core.summary import RunSummary
from tasks.families import GPU, choose_best, place_torch
from tasks.local_cluster import visible_gpus
from tasks.train import TrainedModel


class Scheduler:
    """What `client.scheduler_info` answers: workers and the resources they declare."""

    def __init__(self, **workers: dict[str, float]) -> None:
        self.workers = {f"tcp://{name}:1": {"resources": r} for name, r in workers.items()}

    def scheduler_info(self, n_workers: int = 5) -> dict[str, Any]:
        return {"workers": self.workers}


class Model:
    def __init__(self, family: str) -> None:
        self.family = family


def trained(family: str, valid_auc: float) -> TrainedModel:
    return TrainedModel(Model(family), 1, valid_auc, family, 1.0, {}, {})  # type: ignore[arg-type]


def test_best_keeps_the_better_valid_auc_and_records_both() -> None:
    winner = choose_best(trained("lightgbm", 0.74), trained("torch", 0.75))
    assert winner.family == "torch" and winner.candidates == {"lightgbm": 0.74, "torch": 0.75}
    assert choose_best(trained("lightgbm", 0.75), trained("torch", 0.75)).family == "lightgbm"  # a tie


def test_cuda_goes_to_a_gpu_worker_and_auto_falls_back_to_cpu() -> None:
    gpu = place_torch("cuda", Scheduler(a={}, b={GPU: 1}))
    assert gpu.device == "cuda" and gpu.resources == {GPU: 1}
    assert place_torch("auto", Scheduler(a={}, b={GPU: 2})).resources == {GPU: 1}
    cpu = place_torch("auto", Scheduler(a={}, b={"MEMORY": 1}))
    assert cpu.device == "cpu" and cpu.resources is None and "no Dask worker offers GPU" in cpu.reason
    assert place_torch("cpu", Scheduler(b={GPU: 1})).resources is None  # cpu never takes a GPU worker
    with pytest.raises(
        TrainingError, match=r"no Dask worker offers the resource GPU \(2 worker\(s\).*--resources GPU=1"
    ):
        place_torch("cuda", Scheduler(a={}, b={GPU: 0}))


def test_visible_gpus_follow_cuda_visible_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    for value, expected in (("0,1", 2), ("3", 1), ("", 0), ("-1", 0)):
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", value)
        assert visible_gpus() == expected, value


def test_the_summary_line_says_which_family_won_and_by_how_much() -> None:
    summary = RunSummary(
        dataset="d", model_family="torch", device="cpu", family_valid_auc={"lightgbm": 0.74, "torch": 0.7512}
    )
    assert family_line(summary) == "torch on cpu; best on valid AUC by 0.0112 (lightgbm 0.7400, torch 0.7512)"
    auto = summary.model_copy(update={"family_valid_auc": {}, "device_reason": "model.device auto: no GPU worker"})
    assert family_line(auto) == "torch on cpu (model.device auto: no GPU worker)"
