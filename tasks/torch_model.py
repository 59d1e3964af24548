"""The torch model family: a residual MLP over categorical embeddings and normalised numeric inputs, in
the style of Gorishniy et al. 2021 ("Revisiting Deep Learning Models for Tabular Data", the ResNet
baseline), registered with its preprocessing inside so it takes raw feature values like LightGBM's.

Preprocessing is fitted on the train split only: categories keep the vocabulary LightGBM uses (rarer
ones and nulls share code 0), numeric columns go through a quantile map to a standard normal (robust to
the heavy tails of delays and counts), and each numeric column has a missing indicator beside a value
of 0 (its median after the map), so "missing" is an input the network sees, not a silent zero.

Batches go Parquet -> Polars -> NumPy -> tensors (no pandas). Seeded: on CPU, two runs with the same
data, config and thread count give bit-identical weights. On CUDA it trains in bfloat16 autocast
(float16 with a gradient scaler where bf16 is missing); predicting is float32 and needs no GPU.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import polars as pl

from fusion.core.errors import TrainingError
from fusion.core.settings import TorchConfig
from tasks.classifier import CategoryVocabulary

if TYPE_CHECKING:
    import torch

try:  # the pyfunc base class only matters when MLflow loads the model
    from mlflow.pyfunc import PythonModel
except ImportError:  # pragma: no cover - mlflow is a declared dependency
    PythonModel = object  # type: ignore[misc,assignment]

QUANTILES = 1001  # reference points of each numeric column's quantile map
PREDICT_CHUNK = 65_536  # rows per forward pass when predicting


@dataclass(frozen=True)
class NumericMap:
    """Per numeric column, train quantiles; values map through them to a standard normal."""

    columns: list[str]
    quantiles: list[list[float]]  # per column, QUANTILES values (empty: the column was all null in train)

    @classmethod
    def fit(cls, frame: pl.DataFrame, columns: list[str]) -> NumericMap:
        levels = np.linspace(0.0, 1.0, QUANTILES)
        quantiles = []
        for col in columns:
            values = frame.get_column(col).cast(pl.Float64).to_numpy()
            values = values[np.isfinite(values)]
            quantiles.append(np.quantile(values, levels).tolist() if values.size else [])
        return cls(columns, quantiles)

    def transform(self, frame: pl.DataFrame) -> np.ndarray:
        """(rows, 2 × columns) float32: each column's normal score (0 when missing), then its indicators."""
        from scipy.special import ndtri

        n = frame.height
        raw = (
            frame.select([pl.col(c).cast(pl.Float64) for c in self.columns]).to_numpy()
            if self.columns
            else np.empty((n, 0))
        )
        raw = raw.reshape(n, len(self.columns))
        missing = ~np.isfinite(raw)
        scores = np.zeros_like(raw)
        refs = np.linspace(0.0, 1.0, QUANTILES)
        for j, q in enumerate(self.quantiles):
            if not q:
                continue
            x, qs = raw[:, j], np.asarray(q)
            # the mean of the forward and backward interpolation: a value that many train rows share
            # (a count of 0) maps to the middle of its run of quantiles, not to its first
            u = 0.5 * (np.interp(x, qs, refs) - np.interp(-x, -qs[::-1], -refs[::-1]))
            scores[:, j] = ndtri(np.clip(u, 1e-4, 1 - 1e-4))
        scores[missing] = 0.0
        return np.concatenate([scores, missing.astype(np.float64)], axis=1).astype(np.float32)


def category_codes(frame: pl.DataFrame, vocab: CategoryVocabulary) -> np.ndarray:
    """(rows, categorical columns) int64: the vocabulary's code + 1; unknown and null are 0."""
    columns = list(vocab.categories)
    if not columns:
        return np.zeros((frame.height, 0), dtype=np.int64)
    encoded = vocab.encode(frame.select(columns))
    return encoded.select([(pl.col(c).cast(pl.Int64) + 1).fill_null(0) for c in columns]).to_numpy().astype(np.int64)


def build_network(n_numeric: int, cardinalities: list[int], config: TorchConfig) -> torch.nn.Module:
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = nn.Sequential(
                nn.BatchNorm1d(config.d_block),
                nn.Linear(config.d_block, config.d_hidden),
                nn.ReLU(),
                nn.Dropout(config.dropout),
                nn.Linear(config.d_hidden, config.d_block),
                nn.Dropout(config.dropout),
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.layers(x)

    class ResidualMLP(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embeddings = nn.ModuleList(nn.Embedding(c + 1, config.d_embedding) for c in cardinalities)
            d_in = 2 * n_numeric + config.d_embedding * len(cardinalities)
            self.first = nn.Linear(d_in, config.d_block)
            self.blocks = nn.Sequential(*(Block() for _ in range(config.n_blocks)))
            self.head = nn.Sequential(nn.BatchNorm1d(config.d_block), nn.ReLU(), nn.Linear(config.d_block, 1))

        def forward(self, numeric: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
            parts = [numeric, *(e(codes[:, i]) for i, e in enumerate(self.embeddings))]
            return self.head(self.blocks(self.first(torch.cat(parts, dim=1)))).squeeze(-1)

    return ResidualMLP()


class TorchClassifier(PythonModel):  # type: ignore[misc]
    """MLflow pyfunc model: DataFrame of raw features -> probability of the positive class (on CPU)."""

    family = "torch"

    def __init__(
        self,
        state: bytes,
        features: list[str],
        vocab: CategoryVocabulary,
        numeric: NumericMap,
        config: TorchConfig,
    ) -> None:
        self.state = state  # torch.save of the network's state_dict
        self.features = features
        self.vocab = vocab
        self.numeric = numeric
        self.config = config
        self._net: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_net": None}

    @property
    def network(self) -> torch.nn.Module:
        if self._net is None:
            import torch

            net = build_network(len(self.numeric.columns), self.cardinalities, self.config)
            net.load_state_dict(torch.load(io.BytesIO(self.state), map_location="cpu", weights_only=True))
            self._net = net.eval()
        return self._net

    @property
    def cardinalities(self) -> list[int]:
        return [len(c) for c in self.vocab.categories.values()]

    def digest(self) -> str:
        """A hash of what the model computes: weights and preprocessing."""
        blob = json.dumps([self.features, self.vocab.categories, self.numeric.quantiles, self.config.model_dump()])
        return hashlib.sha256(self.state + blob.encode()).hexdigest()

    def importance(self) -> np.ndarray | None:
        return None  # no per-feature gain; the evaluation report leaves the plot out

    def inputs(self, frame: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        missing = [c for c in self.features if c not in frame.columns]
        if missing:
            raise ValueError(f"input lacks feature column(s): {', '.join(missing)}")
        return self.numeric.transform(frame), category_codes(frame, self.vocab)

    def predict_frame(self, frame: pl.DataFrame) -> np.ndarray:
        import torch

        numeric, codes = self.inputs(frame)
        net, out = self.network, []
        with torch.inference_mode():
            for start in range(0, frame.height, PREDICT_CHUNK):
                stop = start + PREDICT_CHUNK
                logits = net(torch.from_numpy(numeric[start:stop]), torch.from_numpy(codes[start:stop]))
                out.append(torch.sigmoid(logits).double().numpy())
        return np.concatenate(out) if out else np.empty(0)

    # pd.DataFrame: MLflow hands pyfunc models one, and accepts this hint without deriving a schema from it
    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> np.ndarray:
        return self.predict_frame(pl.from_pandas(pd.DataFrame(model_input)))


@dataclass(frozen=True)
class TorchFit:
    model: TorchClassifier
    valid_auc: float
    best_epoch: int
    epochs: int
    fit_seconds: float
    rows_per_second: float  # training rows through forward and backward, per second of the epochs
    device: str
    peak_gpu_bytes: int | None
    history: list[float]  # valid AUC after each epoch


def labels(frame: pl.DataFrame, target: str, name: str) -> np.ndarray:
    y = frame.get_column(target).cast(pl.Float32).to_numpy().copy()  # writable: torch shares the memory
    if np.unique(y).size < 2:
        raise TrainingError(f"{name} split has a single class in target {target!r}")
    return y


def fit_torch(
    train: pl.DataFrame,
    valid: pl.DataFrame,
    features: list[str],
    categorical: list[str],
    target: str,
    config: TorchConfig,
    min_category_count: int,
    device: str = "cpu",
    threads: int = 2,
) -> TorchFit:
    """AdamW on binary cross-entropy, the valid AUC after each epoch; stops `patience` epochs after the
    best one and keeps the best epoch's weights."""
    import torch
    from sklearn.metrics import roc_auc_score

    started = time.perf_counter()  # after torch's import (about 3 s, once per process)
    if device == "cuda" and not torch.cuda.is_available():
        raise TrainingError("model.device is cuda but torch sees no CUDA device on this worker")
    torch.set_num_threads(threads)
    torch.manual_seed(config.seed)
    vocab = CategoryVocabulary.fit(train, categorical, min_category_count)
    numeric_map = NumericMap.fit(train, [c for c in features if c not in categorical])
    model = TorchClassifier(b"", features, vocab, numeric_map, config)

    def tensors(frame: pl.DataFrame, name: str) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
        numeric, codes = model.inputs(frame)
        return torch.from_numpy(numeric).to(device), torch.from_numpy(codes).to(device), labels(frame, target, name)

    x_train, c_train, y = tensors(train, "train")
    x_valid, c_valid, y_valid = tensors(valid, "valid")
    y_train = torch.from_numpy(y).to(device)
    net = build_network(len(numeric_map.columns), model.cardinalities, config).to(device)
    optimizer = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps = config.max_epochs * -(-len(y) // config.batch_size)
    # cosine decay to 0 at max_epochs: the last epochs take small steps, so the valid AUC settles
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / steps)))
    loss_fn = torch.nn.BCEWithLogitsLoss()
    amp = device == "cuda"
    dtype = torch.bfloat16 if amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=amp and dtype == torch.float16)
    generator = torch.Generator().manual_seed(config.seed)
    if amp:
        torch.cuda.reset_peak_memory_stats()

    def score() -> float:
        net.eval()
        with torch.inference_mode(), torch.autocast("cuda", dtype=dtype, enabled=amp):
            p = torch.cat(
                [
                    net(x_valid[i : i + PREDICT_CHUNK], c_valid[i : i + PREDICT_CHUNK]).float()
                    for i in range(0, len(y_valid), PREDICT_CHUNK)
                ]
            )
        return float(roc_auc_score(y_valid, p.cpu().numpy()))

    best_auc, best_epoch, best_state, epoch, trained_rows, epoch_seconds = -1.0, 0, None, 0, 0, 0.0
    history: list[float] = []
    for epoch in range(1, config.max_epochs + 1):
        epoch_started = time.perf_counter()
        net.train()
        order = torch.randperm(len(y), generator=generator).to(device)
        for i in range(0, len(y), config.batch_size):
            batch = order[i : i + config.batch_size]
            if batch.numel() < 2:  # BatchNorm needs two rows
                continue
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast("cuda", dtype=dtype, enabled=amp):
                loss = loss_fn(net(x_train[batch], c_train[batch]).float(), y_train[batch])
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            schedule.step()
        if amp:
            torch.cuda.synchronize()
        epoch_seconds += time.perf_counter() - epoch_started
        trained_rows += len(y)
        auc = score()
        history.append(auc)
        if auc > best_auc:
            best_auc, best_epoch, best_state = auc, epoch, copy.deepcopy(net.state_dict())
        elif epoch - best_epoch >= config.patience:
            break
    assert best_state is not None
    buffer = io.BytesIO()
    torch.save({k: v.cpu() for k, v in best_state.items()}, buffer)
    model.state = buffer.getvalue()
    return TorchFit(
        model=model,
        valid_auc=best_auc,
        best_epoch=best_epoch,
        epochs=epoch,
        fit_seconds=time.perf_counter() - started,
        rows_per_second=trained_rows / epoch_seconds if epoch_seconds else 0.0,
        device=device,
        peak_gpu_bytes=int(torch.cuda.max_memory_allocated()) if amp else None,
        history=history,
    )
