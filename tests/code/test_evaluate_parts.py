"""The calibration table against scikit-learn's calibration_curve, whose means it reports."""

from __future__ import annotations

from typing import Any

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


def test_a_stage_keeps_only_the_parts_it_scores_with_the_whole_splits_sizes_and_digest(
    flights_settings: Any,
) -> None:
    from tasks.train import split_frames
    from tests.code.test_tables_without_time import dataset, labelled

    frame = labelled(1000, 0.3)
    config = dataset(flights_settings, {"method": "stratified", "valid_fraction": 0.15, "test_fraction": 0.15})
    whole = split_frames(frame, config)
    test_only = split_frames(frame, config, keep=("test",))
    assert test_only.test.equals(whole.test) and test_only.record == whole.record
    assert test_only.train.height == test_only.valid.height == 0
    assert test_only.sizes() == whole.sizes() == {"train": 700, "valid": 150, "test": 150}


def test_scores_in_chunks_equal_one_call() -> None:
    import polars as pl

    from tasks.train import in_chunks

    frame = pl.DataFrame({"x": np.arange(1003.0)})
    calls: list[int] = []

    def predict(chunk: pl.DataFrame) -> np.ndarray:
        calls.append(chunk.height)
        return chunk.get_column("x").to_numpy() * 2

    assert np.array_equal(in_chunks(predict, frame, rows=100), frame.get_column("x").to_numpy() * 2)
    assert calls == [100] * 10 + [3]


def test_the_baseline_is_fitted_on_a_seeded_sample_of_at_most_max_rows() -> None:
    import polars as pl

    from tasks.train import SplitFrames, fit_baseline

    rng = np.random.default_rng(3)
    train = pl.DataFrame({"x": rng.normal(size=5000), "y": rng.uniform(size=5000) < 0.3})
    test = pl.DataFrame({"x": rng.normal(size=10), "y": [True, False] * 5})
    parts = SplitFrames(train=train, valid=train.head(0), test=test)
    _, prior = fit_baseline(parts, ["x"], [], "y", "prior", max_rows=500)
    assert prior == pytest.approx([train.sample(n=500, seed=0).get_column("y").mean()] * 10)
    _, everything = fit_baseline(parts, ["x"], [], "y", "prior")
    assert everything == pytest.approx([train.get_column("y").mean()] * 10)


def test_the_logistic_baseline_equals_sklearns_own_imputing_and_encoding() -> None:
    """Medians and category indices prepared in Polars give sklearn's SimpleImputer + OneHotEncoder model:
    nulls and NaN in numbers, missing and rare categories, a category the train rows never had."""
    import polars as pl
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    from tasks.train import SplitFrames, fit_baseline

    rng = np.random.default_rng(7)

    def frame(n: int, cities: list[str | None]) -> pl.DataFrame:
        x = rng.normal(size=n)
        x[rng.uniform(size=n) < 0.1] = np.nan
        weights = np.array([1.0 if c is None or len(c) == 1 else 0.01 for c in cities])  # rare: < 20 rows
        city = rng.choice(np.array(cities, dtype=object), size=n, p=weights / weights.sum())
        y = (x > 0.3) ^ (rng.uniform(size=n) < 0.2) | (city == "b")
        return pl.DataFrame(
            {
                "x": pl.Series(x).fill_nan(None).to_list(),
                "z": rng.integers(0, 9, size=n).astype(float),
                "city": city.tolist(),
            }
        ).with_columns(
            pl.col("x").cast(pl.Float64),
            pl.when(pl.int_range(pl.len()) % 7 == 0).then(float("nan")).otherwise(pl.col("z")).alias("z"),
            pl.Series("y", y),
        )

    train = frame(3000, ["a", "b", "c", None, *[f"rare{i}" for i in range(40)]])
    test = frame(500, ["a", "b", "c", None, "never-seen"])
    parts = SplitFrames(train=train, valid=train.head(0), test=test)
    _, ours = fit_baseline(parts, ["x", "z", "city"], ["city"], "y", "logistic")

    reference = make_pipeline(
        ColumnTransformer(
            [
                ("num", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), ["x", "z"]),
                (
                    "cat",
                    make_pipeline(
                        SimpleImputer(strategy="constant", fill_value="__missing__"),
                        OneHotEncoder(handle_unknown="ignore", min_frequency=20),
                    ),
                    ["city"],
                ),
            ]
        ),
        LogisticRegression(max_iter=300),
    )

    def pandas(f: pl.DataFrame) -> Any:
        pdf = f.select("x", "z", "city").to_pandas()
        pdf["city"] = pdf["city"].astype(object)
        return pdf

    reference.fit(pandas(train), train.get_column("y").to_numpy())
    expected = reference.predict_proba(pandas(test))[:, 1]
    rare = train.group_by("city").len().filter(pl.col("len") < 20).height
    assert rare > 10  # grouped by min_frequency into one column
    assert np.unique(ours).size > 10
    np.testing.assert_allclose(ours, expected, atol=1e-6)
