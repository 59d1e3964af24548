"""The model's feature matrix: the few-rows path (serving) equals the Polars path (training)."""

from __future__ import annotations

import numpy as np
import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from tasks.classifier import SMALL_FRAME, CategoryVocabulary, to_matrix

VOCAB = CategoryVocabulary({"carrier": ["AA", "B6", "UA"], "code": ["1", "2", "7"]})
FEATURES = ["distance", "carrier", "seats", "code", "flag"]


@st.composite
def frames(draw: st.DrawFn) -> pl.DataFrame:
    n = draw(st.integers(0, SMALL_FRAME - 1))
    floats = st.none() | st.floats(allow_nan=False, allow_infinity=False, width=64)
    return pl.DataFrame(
        {
            "distance": draw(st.lists(floats, min_size=n, max_size=n)),
            "carrier": draw(
                st.lists(st.none() | st.sampled_from(["AA", "B6", "UA", "ZZ", ""]), min_size=n, max_size=n)
            ),
            "seats": draw(st.lists(st.none() | st.integers(-(2**31), 2**31 - 1), min_size=n, max_size=n)),
            "code": draw(st.lists(st.none() | st.integers(0, 9), min_size=n, max_size=n)),  # numbers as categories
            "flag": draw(st.lists(st.none() | st.booleans(), min_size=n, max_size=n)),
        },
        schema={"distance": pl.Float64, "carrier": pl.String, "seats": pl.Int32, "code": pl.Int64, "flag": pl.Boolean},
    )


@settings(max_examples=200, deadline=None)
@given(frames())
def test_few_rows_encode_exactly_as_the_polars_path(frame: pl.DataFrame) -> None:
    small = to_matrix(frame, FEATURES, VOCAB)
    # the same rows, padded past the threshold so that the Polars expressions run
    padded = pl.concat([frame, frame.clear(SMALL_FRAME)])
    expected = to_matrix(padded, FEATURES, VOCAB)[: frame.height]
    assert small.shape == (frame.height, len(FEATURES))
    np.testing.assert_array_equal(small, expected)


def test_unknown_and_null_categories_are_missing_and_known_ones_are_codes() -> None:
    frame = pl.DataFrame(
        {"distance": [1.5, None], "carrier": ["UA", "ZZ"], "seats": [None, 3], "code": [7, None], "flag": [True, None]}
    )
    matrix = to_matrix(frame, FEATURES, VOCAB)
    np.testing.assert_array_equal(matrix[0], [1.5, 2.0, np.nan, 2.0, 1.0])
    np.testing.assert_array_equal(matrix[1], [np.nan, np.nan, 3.0, np.nan, np.nan])


def test_a_large_frame_becomes_one_column_major_matrix() -> None:
    # LightGBM takes a column-major float64 matrix as it is; any other layout or type it copies
    frame = pl.DataFrame({"distance": [1.0] * SMALL_FRAME, "carrier": ["AA"] * SMALL_FRAME, "seats": [2] * SMALL_FRAME})
    matrix = to_matrix(frame.with_columns(code=None, flag=True), FEATURES, VOCAB)
    assert matrix.dtype == np.float64
    assert matrix.flags["F_CONTIGUOUS"]
    np.testing.assert_array_equal(matrix[0], [1.0, 0.0, 2.0, np.nan, 1.0])
