"""Request bodies of the model-input protocols -> columns of model inputs, and the typing of those columns.

MLflow's scoring formats (dataframe_split, dataframe_records, instances, inputs; the public format of
`mlflow models serve`) and Open Inference Protocol v2 tensors are read here; every value is then typed
by tasks/schema.py, the function ingest uses, so a value means the same in training and in serving.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
import polars as pl
from pydantic import BaseModel, Field

from fusion.core.errors import TypeMismatch
from serving.predictor import LoadedModel
from tasks.schema import records_columns

NUMERIC_OIP = {"BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64"}
MLFLOW_FORMATS = ("dataframe_split", "dataframe_records", "instances", "inputs")


class BadInput(Exception):
    """A body that parses but is wrong; answered 422 naming the field."""


class OipTensor(BaseModel):
    name: str
    shape: list[int] = Field(min_length=1, max_length=2)
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any]


class OipRequest(BaseModel):
    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[OipTensor] = Field(min_length=1)
    outputs: list[dict[str, Any]] | None = None


def column_field(column: str) -> str:
    return f"column {column!r}"


def checked_inputs(model: LoadedModel, columns: dict[str, list[Any]], where: Callable[[str], str]) -> int:
    """The request's shape before any typing: every column a model input, all of one length (the rows)."""
    unknown = [c for c in columns if c not in model.input_types]
    if unknown:
        raise BadInput(f"{where(unknown[0])}: not a model input (inputs: {', '.join(model.input_types)})")
    lengths = {len(v) for v in columns.values()}
    if len(lengths) > 1:
        raise BadInput(f"inputs have different numbers of rows: {sorted(lengths)}")
    return lengths.pop() if lengths else 0


def typed_inputs(
    model: LoadedModel, columns: dict[str, list[Any]], where: Callable[[str], str], row_field: str | None = None
) -> pl.DataFrame:
    """Model-input columns -> the typed frame; an unknown column or a value of the wrong type is BadInput
    naming it (`row_field` formats a row and a column, for row-oriented bodies)."""
    rows = checked_inputs(model, columns, where)
    try:
        return model.inputs_frame(columns, rows)
    except TypeMismatch as exc:
        field = where(exc.column)
        if row_field is not None and exc.rows:
            field = row_field.format(row=exc.rows[0], column=exc.column)
        raise BadInput(f"{field}: {exc.reason}") from exc


def mlflow_columns(body: bytes) -> tuple[dict[str, list[Any]], str | None]:
    """An MLflow scoring body -> (columns, row field format for row-oriented bodies); BadInput names what is wrong."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadInput(f"body: not JSON ({exc})") from exc
    if not isinstance(doc, dict):
        raise BadInput(f"body: expected a JSON object with one of {', '.join(MLFLOW_FORMATS)}")
    given = [k for k in MLFLOW_FORMATS if k in doc]
    extra = sorted(set(doc) - {*MLFLOW_FORMATS, "params"})
    if len(given) != 1 or extra:
        found = ", ".join(sorted(doc)) or "nothing"
        raise BadInput(f"body: expected exactly one of {', '.join(MLFLOW_FORMATS)} (and optional params), got {found}")
    key = given[0]
    value = doc[key]
    if key == "dataframe_split":
        return _split_columns(value), "dataframe_split.data.{row}.{column}"
    if key == "inputs" and isinstance(value, dict):
        return _named_columns(value, "inputs"), None
    return _record_columns(value, key), key + ".{row}.{column}"


def _split_columns(split: Any) -> dict[str, list[Any]]:
    if (
        not isinstance(split, dict)
        or not {"columns", "data"} <= set(split)
        or set(split) - {"columns", "data", "index"}
    ):
        raise BadInput("dataframe_split: expected an object with columns, data and optional index")
    names, data = split["columns"], split["data"]
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names) or len(set(names)) != len(names):
        raise BadInput("dataframe_split.columns: expected a list of distinct column names")
    if not isinstance(data, list):
        raise BadInput("dataframe_split.data: expected a list of rows")
    for i, row in enumerate(data):
        if not isinstance(row, list) or len(row) != len(names):
            raise BadInput(f"dataframe_split.data.{i}: expected a list of {len(names)} values (one per column)")
    return {name: [row[j] for row in data] for j, name in enumerate(names)}


def _record_columns(records: Any, key: str) -> dict[str, list[Any]]:
    if not isinstance(records, list) or not records:
        raise BadInput(f"{key}: expected a non-empty list of records (objects of column -> value)")
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            raise BadInput(f"{key}.{i}: expected an object of column -> value, got {type(record).__name__}")
    return records_columns(records, list(dict.fromkeys(k for r in records for k in r)))


def _named_columns(columns: dict[str, Any], key: str) -> dict[str, list[Any]]:
    out = {}
    for name, values in columns.items():
        if not isinstance(values, list):
            raise BadInput(f"{key}.{name}: expected a list of values")
        out[name] = values
    return out


def oip_columns(body: OipRequest, model: LoadedModel) -> dict[str, list[Any]]:
    """OIP v2 tensors, one per model input, shape [n] or [n, 1] -> columns; BadInput names the tensor."""
    columns: dict[str, list[Any]] = {}
    for i, tensor in enumerate(body.inputs):
        where = f"inputs[{i}] ({tensor.name})"
        declared = model.input_types.get(tensor.name)
        if declared is None:
            raise BadInput(f"{where}: not a model input (inputs: {', '.join(model.input_types)})")
        if len(tensor.shape) == 2 and tensor.shape[1] != 1:
            raise BadInput(f"{where}: shape {tensor.shape}: one column per input, so [n] or [n, 1]")
        data = _flatten(tensor.data)
        if len(data) != tensor.shape[0]:
            raise BadInput(f"{where}: shape {tensor.shape} needs {tensor.shape[0]} values, data has {len(data)}")
        text = declared == "str"
        if text != (tensor.datatype == "BYTES") or (not text and tensor.datatype not in NUMERIC_OIP):
            want = "BYTES" if text else "a numeric type (FP64, FP32, INT64, ...)"
            raise BadInput(f"{where}: datatype {tensor.datatype} does not fit a {declared} input; send {want}")
        columns[tensor.name] = data
    return columns


def _flatten(values: list[Any]) -> list[Any]:
    flat: list[Any] = []
    for v in values:
        flat.extend(_flatten(v) if isinstance(v, list) else [v])
    return flat
