"""The torch family's model on a small generated table: preprocessing fitted on train only, missing values
as indicators, seeded bit-identical training on CPU, and the pickled pyfunc predicting the same."""

from __future__ import annotations

import pickle

import numpy as np
import polars as pl
import pytest
from sklearn.metrics import roc_auc_score

from fusion.core.errors import TrainingError
from fusion.core.settings import TorchConfig
from tasks.classifier import CategoryVocabulary
from tasks.torch_model import NumericMap, category_codes, fit_torch

FEATURES = ["amount", "score", "kind"]
SMALL = TorchConfig(d_embedding=4, d_block=16, d_hidden=32, n_blocks=1, batch_size=256, max_epochs=6, seed=3)


def table(n: int, seed: int) -> pl.DataFrame:
    """A learnable target: large amounts of kind "b" are positive, more often than the rest; a tenth of
    `score` is missing, and missing scores are positive more often (so the indicator carries signal)."""
    rng = np.random.default_rng(seed)
    amount = rng.lognormal(3, 1, n)
    kind = rng.choice(["a", "b", "c"], n)
    score = rng.normal(0, 1, n)
    missing = rng.random(n) < 0.1
    logit = 1.5 * (np.log(amount) - 3) * (kind == "b") + 1.2 * missing + 0.5 * score * ~missing - 0.5
    y = rng.random(n) < 1 / (1 + np.exp(-logit))
    return pl.DataFrame(
        {
            "amount": amount,
            "score": np.where(missing, np.nan, score),
            "kind": kind,
            "target": y,
        }
    ).with_columns(pl.col("score").fill_nan(None))


def test_numeric_map_is_fitted_on_train_and_flags_missing_values() -> None:
    train = pl.DataFrame({"x": [float(v) for v in range(100)]})
    numeric = NumericMap.fit(train, ["x"])
    later = pl.DataFrame({"x": [None, -50.0, 49.5, 1e9]}, schema={"x": pl.Float64})
    values = numeric.transform(later)
    assert values.shape == (4, 2)  # the score and the missing indicator
    assert values[0].tolist() == [0.0, 1.0]  # missing: a neutral value and the flag, not a silent zero alone
    assert values[1, 0] < -3.5 and values[3, 0] > 3.5  # beyond train's range: the map's clipped ends
    assert abs(values[2, 0]) < 0.05 and values[1:, 1].tolist() == [0.0, 0.0, 0.0]  # train's median maps to ~0


def test_a_value_many_rows_share_maps_to_the_middle_of_its_quantiles() -> None:
    train = pl.DataFrame({"count": [0.0] * 80 + [float(v) for v in range(1, 21)]})
    score = NumericMap.fit(train, ["count"]).transform(pl.DataFrame({"count": [0.0]}))[0, 0]
    assert -0.5 < score < 0.0  # the 0-40th percentile run: its middle, not its bottom (≈ -3.7)


def test_unknown_and_missing_categories_share_code_zero() -> None:
    vocab = CategoryVocabulary.fit(pl.DataFrame({"kind": ["a"] * 5 + ["b"] * 5 + ["rare"]}), ["kind"], 2)
    codes = category_codes(pl.DataFrame({"kind": ["b", "a", "rare", None, "new"]}), vocab)
    assert codes[:, 0].tolist() == [2, 1, 0, 0, 0]


def test_training_is_seeded_bit_identical_on_cpu_and_learns() -> None:
    train, valid, test = table(3000, 1), table(1000, 2), table(2000, 3)
    fits = [fit_torch(train, valid, FEATURES, ["kind"], "target", SMALL, 5, threads=1) for _ in range(2)]
    assert fits[0].model.state == fits[1].model.state
    assert fits[0].history == fits[1].history and fits[0].model.digest() == fits[1].model.digest()
    p = fits[0].model.predict_frame(test)
    assert ((p > 0) & (p < 1)).all() and p.dtype == np.float64
    assert roc_auc_score(test["target"].to_numpy(), p) > 0.7
    assert fits[0].valid_auc == max(fits[0].history)  # the best epoch's weights are the ones kept
    other = fit_torch(train, valid, FEATURES, ["kind"], "target", SMALL.model_copy(update={"seed": 4}), 5, threads=1)
    assert other.model.state != fits[0].model.state


def test_the_pickled_model_predicts_the_same_from_raw_values() -> None:
    train, valid = table(2000, 1), table(500, 2)
    model = fit_torch(train, valid, FEATURES, ["kind"], "target", SMALL, 5, threads=1).model
    rows = pl.DataFrame(
        {"amount": [50.0, None], "score": [0.3, None], "kind": ["b", "never seen"]},
        schema={"amount": pl.Float64, "score": pl.Float64, "kind": pl.String},
    )
    before = model.predict_frame(rows)
    restored = pickle.loads(pickle.dumps(model))
    assert restored._net is None  # weights travel as bytes, the network is rebuilt on first use
    assert np.array_equal(restored.predict_frame(rows), before)
    with pytest.raises(ValueError, match="lacks feature column"):
        model.predict_frame(rows.drop("score"))


def test_cuda_without_a_device_is_refused_by_name() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    with pytest.raises(TrainingError, match=r"model\.device is cuda but torch sees no CUDA device"):
        fit_torch(table(100, 1), table(100, 2), FEATURES, ["kind"], "target", SMALL, 5, device="cuda")
