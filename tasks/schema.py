"""The one typing path: a column's declared type -> a typed Polars column.

Ingest (CSV text, Parquet columns) and every serving protocol (raw records, MLflow's scoring formats,
OIP tensors) go through `cast_column`, so a value means the same in training and in serving. JSON
values first become the text a CSV cell of them would hold (`text_column`), then the same cast
applies: a request row is typed exactly as the same row in a CSV file. A local time in a DST gap is
refused on both paths; one in a DST overlap is read as the earlier instant on both.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

import polars as pl

from fusion.core.errors import TypeMismatch
from fusion.core.settings import ColumnType, TableConfig

POLARS_TYPES: dict[str, pl.DataType] = {
    "int32": pl.Int32(),
    "int64": pl.Int64(),
    "float32": pl.Float32(),
    "float64": pl.Float64(),
    "str": pl.String(),
    "bool": pl.Boolean(),
    "date": pl.Date(),
    "datetime": pl.Datetime("us", "UTC"),
}
TRUE_TEXT = ("true", "1", "t", "yes")
FALSE_TEXT = ("false", "0", "f", "no")
# An aware timestamp ends in Z or a UTC offset; naive ones are read in the table's timezone.
AWARE = r"(Z|[+-]\d{2}:?\d{2})$"


def cast_column(column: pl.Series, declared: ColumnType, where: str, timezone: str) -> pl.Series:
    """Cast one column to its declared type, or raise TypeMismatch naming the column, the rows and the values.

    `where` names the column in messages (`flights.dep_delay`, `records.dep_delay`)."""
    target = POLARS_TYPES[declared]
    if column.dtype == target:
        return column
    if column.dtype == pl.String:
        cast = _from_text(column, declared, timezone)
        _refuse_lost(column, cast, declared, where, timezone)
        return cast.alias(column.name)
    if column.dtype.is_numeric() and target.is_numeric():
        try:
            cast = column.cast(target, strict=True)
        except Exception as exc:
            message = f"column {where}: has type {column.dtype}, expected {declared} ({exc})"
            raise TypeMismatch(where, declared, [], message) from exc
        changed = (cast.cast(column.dtype) != column).fill_null(False)
        if changed.any():
            rows = _rows(changed)
            raise TypeMismatch(
                where,
                declared,
                rows,
                f"column {where}: has type {column.dtype}, expected {declared}; {int(changed.sum())} value(s) would"
                f" change, e.g. {_examples(column.filter(changed))}{_at(rows)}",
            )
        return cast
    if isinstance(column.dtype, pl.Datetime) and declared == "datetime":
        moved = column if column.dtype.time_zone else _localize(column, timezone)
        return moved.dt.convert_time_zone("UTC").dt.cast_time_unit("us")
    raise TypeMismatch(where, declared, [], f"column {where}: has type {column.dtype}, expected {declared}")


def _from_text(column: pl.Series, declared: ColumnType, timezone: str) -> pl.Series:
    text = column.str.strip_chars()
    if declared == "datetime":
        return _datetimes(text, timezone)
    if declared == "date":
        return text.str.to_date(strict=False)
    if declared == "bool":
        lowered = text.str.to_lowercase()
        truth = pl.when(lowered.is_in(TRUE_TEXT)).then(True).when(lowered.is_in(FALSE_TEXT)).then(False).otherwise(None)
        return pl.select(truth).to_series()
    return text.cast(POLARS_TYPES[declared], strict=False)


def _datetimes(text: pl.Series, timezone: str) -> pl.Series:
    aware = text.str.contains(AWARE).fill_null(False)
    if not aware.any():
        return _localize(text.str.to_datetime(time_unit="us", strict=False), timezone).dt.convert_time_zone("UTC")
    if not (~aware & text.is_not_null()).any():
        return text.str.to_datetime(time_unit="us", strict=False, time_zone="UTC")
    # Both kinds in one column: each parsed by its own rule, then put back in row order.
    index = pl.int_range(len(text), eager=True)
    parts = [
        text.filter(aware).str.to_datetime(time_unit="us", strict=False, time_zone="UTC"),
        _localize(text.filter(~aware).str.to_datetime(time_unit="us", strict=False), timezone).dt.convert_time_zone(
            "UTC"
        ),
    ]
    positions = pl.concat([index.filter(aware), index.filter(~aware)])
    return pl.DataFrame({"i": positions, "v": pl.concat(parts)}).sort("i").get_column("v")


def _localize(naive: pl.Series, timezone: str) -> pl.Series:
    # A wall time that never happened (DST gap) is no instant: null, so the caller refuses it.
    return naive.dt.replace_time_zone(timezone, ambiguous="earliest", non_existent="null")


def _refuse_lost(column: pl.Series, cast: pl.Series, declared: ColumnType, where: str, timezone: str) -> None:
    lost = column.is_not_null() & cast.is_null()
    if not lost.any():
        return
    rows = _rows(lost)
    hint = f" (or local times that do not exist in {timezone})" if declared == "datetime" else ""
    raise TypeMismatch(
        where,
        declared,
        rows,
        f"column {where}: expected {declared}, found {int(lost.sum())} value(s) that are not{hint},"
        f" e.g. {_examples(column.filter(lost))}{_at(rows)}",
    )


def _rows(mask: pl.Series) -> list[int]:
    return mask.arg_true().head(5).to_list()


def _at(rows: list[int]) -> str:
    return f" at row(s) {', '.join(map(str, rows))}" if rows else ""


def _examples(values: pl.Series) -> str:
    return ", ".join(repr(v) for v in values.head(3).to_list())


def text_column(name: str, values: Sequence[Any], null_values: Sequence[str] = ()) -> pl.Series:
    """JSON values of one column as the text a CSV file of them holds (JSON numbers are text on the wire
    too), with `null_values` read as null: the column `cast_column` then types as ingest does."""
    nulls = frozenset(null_values)
    text = [None if v is None else as_text(v, name, i) for i, v in enumerate(values)]
    return pl.Series(name, [None if t in nulls else t for t in text], dtype=pl.String)


def as_text(value: Any, column: str, row: int) -> str:
    """A scalar as a CSV cell holds it."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, dt.date | dt.datetime):
        return value.isoformat()
    raise TypeMismatch(column, "scalar", [row], f"column {column}: expected a scalar, got {type(value).__name__}")


def typed_columns(
    columns: Mapping[str, Sequence[Any]],
    types: Mapping[str, ColumnType],
    timezone: str = "UTC",
    null_values: Sequence[str] = (),
    rows: int | None = None,
) -> pl.DataFrame:
    """JSON columns -> a frame with exactly `types`' columns in their order, each cast by `cast_column`;
    an absent column is all null. Raises TypeMismatch (its `column` is the name in `types`)."""
    height = rows if rows is not None else max((len(v) for v in columns.values()), default=0)
    series = []
    for name, declared in types.items():
        values = columns.get(name)
        if values is None:
            series.append(pl.Series(name, [None] * height, dtype=POLARS_TYPES[declared]))
            continue
        series.append(cast_column(text_column(name, values, null_values), declared, name, timezone))
    return pl.DataFrame(series, schema={n: POLARS_TYPES[t] for n, t in types.items()})


def records_columns(records: Sequence[Mapping[str, Any]], names: Sequence[str]) -> dict[str, list[Any]]:
    """Row-oriented records -> columns (absent fields are null)."""
    return {name: [r.get(name) for r in records] for name in names}


def records_frame(records: Sequence[Mapping[str, Any]], table: TableConfig) -> pl.DataFrame:
    """Raw records of a table (JSON values) -> its typed columns, as ingest types a CSV file of them."""
    columns = records_columns(records, list(table.columns))
    return typed_columns(columns, table.columns, table.datetime_timezone, table.null_values, rows=len(records))
