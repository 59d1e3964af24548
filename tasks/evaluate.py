"""Evaluate: test-split metrics of the model beside a baseline, a calibration table and plots."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl
from sklearn.calibration import calibration_curve
from sklearn.metrics import average_precision_score, log_loss, roc_auc_score, roc_curve

from fusion.core.lake import Lake
from tasks.train import SplitFrames, TrainedModel, fit_baseline, in_chunks

FAMILY_LABELS = {"lightgbm": "LightGBM", "torch": "torch MLP"}


@dataclass(frozen=True)
class CalibrationBin:
    lower: float
    upper: float
    rows: int
    mean_predicted: float
    observed_rate: float


@dataclass(frozen=True)
class Evaluation:
    test_auc: float
    test_pr_auc: float
    test_logloss: float
    baseline_auc: float
    baseline_pr_auc: float
    baseline_logloss: float
    baseline_kind: str
    valid_auc: float
    test_rows: int
    test_positive_rate: float
    calibration: list[CalibrationBin]
    artifacts: dict[str, str]  # name -> lake path (plots, calibration table)

    def metrics(self) -> dict[str, float]:
        return {
            "test_auc": self.test_auc,
            "test_pr_auc": self.test_pr_auc,
            "test_logloss": self.test_logloss,
            "baseline_auc": self.baseline_auc,
            "baseline_pr_auc": self.baseline_pr_auc,
            "baseline_logloss": self.baseline_logloss,
            "valid_auc": self.valid_auc,
        }


def calibration_table(y: np.ndarray, p: np.ndarray, bins: int = 10) -> list[CalibrationBin]:
    """Reliability table over `bins` equal-width bins of the predicted probability; empty bins are left out."""
    observed, predicted = calibration_curve(y, p, n_bins=bins, strategy="uniform")
    edges = np.linspace(0.0, 1.0, bins + 1)
    # calibration_curve returns only the means of its non-empty bins; count rows with the binning it uses
    # (searchsorted over the inner edges: a probability on an edge falls in the lower bin) so counts and means agree.
    counts = np.bincount(np.searchsorted(edges[1:-1], p), minlength=bins)
    filled = np.flatnonzero(counts)
    return [
        CalibrationBin(float(edges[b]), float(edges[b + 1]), int(counts[b]), float(mean), float(rate))
        for b, mean, rate in zip(filled, predicted, observed, strict=True)
    ]


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def plot_roc(y: np.ndarray, curves: dict[str, np.ndarray]) -> bytes:
    # A Figure of its own, not pyplot: no global backend switch (a notebook's inline plots keep working)
    # and no shared state between the threads of a Dask worker.
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 5))
    ax = fig.subplots()
    for label, p in curves.items():
        fpr, tpr, _ = roc_curve(y, p)
        ax.plot(fpr, tpr, label=f"{label} (AUC {roc_auc_score(y, p):.3f})")
    ax.plot([0, 1], [0, 1], "k:", lw=1)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC, test split")
    ax.legend(loc="lower right")
    return _png(fig)


def plot_importance(names: list[str], gains: np.ndarray, top: int = 20) -> bytes:
    from matplotlib.figure import Figure

    order = np.argsort(gains)[::-1][:top][::-1]
    fig = Figure(figsize=(6, 0.3 * len(order) + 1))
    ax = fig.subplots()
    ax.barh([names[i] for i in order], gains[order])
    ax.set(xlabel="total gain", title="feature importance (LightGBM gain)")
    return _png(fig)


def evaluate_model(
    trained: TrainedModel,
    parts: SplitFrames,
    categorical: list[str],
    target: str,
    baseline_kind: str,
    lake: Lake,
    report_dir: str,
    baseline_rows: int | None = None,
) -> Evaluation:
    model = trained.model
    y = parts.test.get_column(target).cast(pl.Float64).to_numpy()
    p = np.clip(in_chunks(model.predict_frame, parts.test), 1e-7, 1 - 1e-7)
    _, baseline = fit_baseline(parts, model.features, categorical, target, baseline_kind, baseline_rows)
    baseline = np.clip(baseline, 1e-7, 1 - 1e-7)
    calibration = calibration_table(y, p)
    gains = model.importance()
    artifacts = {
        "roc.png": lake.write_bytes(
            plot_roc(y, {FAMILY_LABELS.get(model.family, model.family): p, f"baseline ({baseline_kind})": baseline}),
            f"{report_dir}/roc.png",
        ),
        "calibration.json": lake.write_json([c.__dict__ for c in calibration], f"{report_dir}/calibration.json"),
    }
    if gains is not None:  # the torch MLP has no per-feature gain
        artifacts["feature_importance.png"] = lake.write_bytes(
            plot_importance(model.features, gains), f"{report_dir}/feature_importance.png"
        )
    return Evaluation(
        test_auc=float(roc_auc_score(y, p)),
        test_pr_auc=float(average_precision_score(y, p)),
        test_logloss=float(log_loss(y, p)),
        baseline_auc=float(roc_auc_score(y, baseline)) if np.unique(baseline).size > 1 else 0.5,
        baseline_pr_auc=float(average_precision_score(y, baseline)),
        baseline_logloss=float(log_loss(y, baseline)),
        baseline_kind=baseline_kind,
        valid_auc=trained.valid_auc,
        test_rows=len(y),
        test_positive_rate=float(y.mean()),
        calibration=calibration,
        artifacts=artifacts,
    )
