"""The calibration table against scikit-learn's calibration_curve, whose means it reports."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.calibration import calibration_curve

from tasks.evaluate import calibration_table


def test_calibration_table_matches_sklearn_on_non_empty_bins() -> None:
    # Bins 2-4 and 6-8 are empty; 0.2 sits on an edge, which sklearn puts in the lower bin.
    p = np.array([0.05, 0.15, 0.2, 0.55, 0.58, 0.95, 0.99])
    y = np.array([0.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0])
    table = calibration_table(y, p, bins=10)
    observed, predicted = calibration_curve(y, p, n_bins=10, strategy="uniform")
    assert sum(b.rows for b in table) == len(p)
    assert [b.rows for b in table] == [1, 2, 2, 2]
    assert [b.lower for b in table] == pytest.approx([0.0, 0.1, 0.5, 0.9])
    assert [b.upper for b in table] == pytest.approx([0.1, 0.2, 0.6, 1.0])
    assert [b.mean_predicted for b in table] == pytest.approx(predicted.tolist())
    assert [b.observed_rate for b in table] == pytest.approx(observed.tolist())
    # Control: each count must be the count behind its mean, so the row-weighted means give back the overall mean.
    assert sum(b.rows * b.mean_predicted for b in table) == pytest.approx(p.sum())


def test_calibration_table_on_many_rows_keeps_every_row() -> None:
    rng = np.random.default_rng(7)
    p = np.concatenate([rng.uniform(0.0, 0.3, 400), rng.uniform(0.7, 1.0, 600)])  # nothing in (0.3, 0.7)
    y = (rng.uniform(size=p.size) < p).astype(float)
    table = calibration_table(y, p, bins=20)
    observed, predicted = calibration_curve(y, p, n_bins=20, strategy="uniform")
    assert sum(b.rows for b in table) == p.size and len(table) == predicted.size
    assert all(b.lower < 0.3 or b.lower >= 0.7 for b in table)
    assert [b.mean_predicted for b in table] == pytest.approx(predicted.tolist())
    assert [b.observed_rate for b in table] == pytest.approx(observed.tolist())
