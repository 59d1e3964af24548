"""The one typing path: a column's declared type -> a typed Polars column.

Ingest (CSV text, Parquet columns) and every serving protocol (raw records, MLflow's scoring formats,
OIP tensors) go through `cast_column`, so a value means the same in training and in serving. JSON
values first become the text a CSV cell of them would hold (`text_column`), then the same cast
applies: a request row is typed exactly as the same row in a CSV file. A local time in a DST gap is
refused on both paths; one in a DST overlap is read as the earlier instant on both.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
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
NUMERIC = frozenset({"int32", "int64", "float32", "float64"})
TRUE_TEXT = ("true", "1", "t", "yes")
FALSE_TEXT = ("false", "0", "f", "no")
# An aware timestamp ends in Z or a UTC offset; naive ones are read in the table's timezone.
AWARE = r"(Z|[+-]\d{2}:?\d{2})$"


def cast_frame(
    frame: pl.DataFrame, types: Mapping[str, ColumnType], timezone: str, where: Callable[[str], str] = str
) -> pl.DataFrame:
    """`types`' columns of `frame`, in their order, each cast by the rules of `cast_column`.

    Text to numbers, the common case, is one select for all such columns (a serving request is a few rows:
    per-column calls cost more than the casting); any other column, and any column that lost a value,
    goes through `cast_column`, which raises the error naming it."""
    text_numbers = [n for n, t in types.items() if t in NUMERIC and frame[n].dtype == pl.String]
    cast = frame.select(pl.col(n).str.strip_chars().cast(POLARS_TYPES[types[n]], strict=False) for n in text_numbers)
    columns = []
    for name, declared in types.items():
        if name in text_numbers and cast[name].null_count() == frame[name].null_count():
            columns.append(cast[name])
        else:
            columns.append(cast_column(frame[name], declared, where(name), timezone))
    return pl.DataFrame(columns)


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
            raise TypeMismatch(where, declared, [], f"has type {column.dtype}, expected {declared} ({exc})") from exc
        changed = (cast.cast(column.dtype) != column).fill_null(False)
        if changed.any():
            rows = _rows(changed)
            raise TypeMismatch(
                where,
                declared,
                rows,
                f"has type {column.dtype}, expected {declared}; {int(changed.sum())} value(s) would change,"
                f" e.g. {_examples(column.filter(changed))}{_at(rows)}",
            )
        return cast
    if isinstance(column.dtype, pl.Datetime) and declared == "datetime":
        moved = column if column.dtype.time_zone else _localize(column, timezone)
        return moved.dt.convert_time_zone("UTC").dt.cast_time_unit("us")
    raise TypeMismatch(where, declared, [], f"has type {column.dtype}, expected {declared}")


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
        return _localize(_parsed(text), timezone).dt.convert_time_zone("UTC")
    if not (~aware & text.is_not_null()).any():
        return _parsed(text, "UTC")
    # Both kinds in one column: each parsed by its own rule, then put back in row order.
    index = pl.int_range(len(text), eager=True)
    parts = [
        _parsed(text.filter(aware), "UTC"),
        _localize(_parsed(text.filter(~aware)), timezone).dt.convert_time_zone("UTC"),
    ]
    positions = pl.concat([index.filter(aware), index.filter(~aware)])
    return pl.DataFrame({"i": positions, "v": pl.concat(parts)}).sort("i").get_column("v")


def _parsed(text: pl.Series, time_zone: str | None = None) -> pl.Series:
    """Text -> datetimes; a value that parses as none is null (the caller names it). Polars infers the format
    from the values and raises, instead of giving nulls, when no format fits any of them ("-2.5e+18", "soon")."""
    try:
        return text.str.to_datetime(time_unit="us", strict=False, time_zone=time_zone)
    except pl.exceptions.ComputeError:
        return pl.Series(text.name, [None] * len(text), dtype=pl.Datetime("us", time_zone))


def _localize(naive: pl.Series, timezone: str) -> pl.Series:
    # A wall time that never happened (DST gap) is no instant: null, so the caller refuses it.
    return naive.dt.replace_time_zone(timezone, ambiguous="earliest", non_existent="null")


def _refuse_lost(column: pl.Series, cast: pl.Series, declared: ColumnType, where: str, timezone: str) -> None:
    if cast.null_count() == column.null_count():  # no value lost (null counts are kept, not computed)
        return
    lost = column.is_not_null() & cast.is_null()
    rows = _rows(lost)
    hint = f" (or local times that do not exist in {timezone})" if declared == "datetime" else ""
    raise TypeMismatch(
        where,
        declared,
        rows,
        f"expected {declared}, found {int(lost.sum())} value(s) that are not{hint},"
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
    raise TypeMismatch(column, "scalar", [row], f"expected a scalar, got {type(value).__name__}")


def typed_columns(
    columns: Mapping[str, Sequence[Any]],
    types: Mapping[str, ColumnType],
    timezone: str = "UTC",
    null_values: Sequence[str] = (),
    rows: int | None = None,
) -> pl.DataFrame:
    """JSON columns -> a frame with exactly `types`' columns in their order, typed by `cast_frame`;
    an absent column is all null. Raises TypeMismatch (its `column` is the name in `types`)."""
    height = rows if rows is not None else max((len(v) for v in columns.values()), default=0)
    given = []
    for name, declared in types.items():
        values = columns.get(name)
        if values is None:
            given.append(pl.Series(name, [None] * height, dtype=POLARS_TYPES[declared]))
        else:
            exact = _exact_numbers(name, values, declared)
            given.append(exact if exact is not None else text_column(name, values, null_values))
    return cast_frame(pl.DataFrame(given), types, timezone)


def _exact_numbers(name: str, values: Sequence[Any], declared: ColumnType) -> pl.Series | None:
    """JSON numbers that a CSV cell of their text would type to the very same values (64-bit floats, integers
    within 53 bits for floats), as a typed column at once; None when the text path must decide."""
    if declared not in ("float64", "int64", "int32"):
        return None
    floats = declared == "float64"
    for v in values:
        if v is None or (isinstance(v, float) and floats):
            continue
        if not isinstance(v, int) or isinstance(v, bool) or abs(v) >= 2**53:
            return None
    try:
        return pl.Series(name, values, dtype=POLARS_TYPES[declared], strict=True)
    except (OverflowError, TypeError, ValueError, pl.exceptions.PolarsError):
        return None  # out of range for the type: the text path names the value


def records_columns(records: Sequence[Mapping[str, Any]], names: Sequence[str]) -> dict[str, list[Any]]:
    """Row-oriented records -> columns (absent fields are null)."""
    return {name: [r.get(name) for r in records] for name in names}


def records_frame(records: Sequence[Mapping[str, Any]], table: TableConfig) -> pl.DataFrame:
    """Raw records of a table (JSON values) -> its typed columns, as ingest types a CSV file of them."""
    columns = records_columns(records, list(table.columns))
    return typed_columns(columns, table.columns, table.datetime_timezone, table.null_values, rows=len(records))
