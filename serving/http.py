"""The HTTP side of serving (FastAPI): routes, request validation, auth, body limit, error shapes.

Built per replica by `build_http_app(backend, args)`, so the /v1/predict record schema comes from
the dataset config. `backend` does the work: in Ray Serve, the ModelCore of the same replica
(serving/app.py, ReplicaBackend).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal, Protocol

import orjson
import pandas as pd
import polars as pl
from fastapi import Depends, FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CollectorRegistry, Counter, Histogram
from pydantic import BaseModel, ConfigDict, Field, create_model
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.auth import Authenticator
from serving.metrics import merged_exposition
from serving.model_server import NotReady, ServingArgs

NUMERIC_OIP = {"BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64"}
FIELD_TYPES: dict[str, Any] = {
    "int32": int,
    "int64": int,
    "float32": float,
    "float64": float,
    "str": str,
    "bool": bool,
    "date": dt.date,
    "datetime": dt.datetime,
}


class Backend(Protocol):
    async def predict_records(self, records: list[dict[str, Any]]) -> dict[str, Any]: ...
    async def predict_frame(self, frame: pl.DataFrame) -> dict[str, Any]: ...
    async def info(self) -> dict[str, Any] | None: ...
    async def metric_snapshots(self) -> list[list[Any]]: ...


class BadInput(Exception):
    """A body that parses but is wrong; answered 422 naming the field."""


class BodyLimit:
    """413 for bodies over the limit, by Content-Length or, when chunked, while reading."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await self._too_large(send)
            return
        seen = 0

        async def counting() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise _TooLarge
            return message

        try:
            await self.app(scope, counting, send)
        except _TooLarge:
            await self._too_large(send)

    async def _too_large(self, send: Send) -> None:
        body = json.dumps({"error": f"request body is larger than {self.max_bytes} bytes"}).encode()
        await send({"type": "http.response.start", "status": 413, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass


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


def record_model(fields: dict[str, str]) -> type[BaseModel]:
    """The /v1/predict record: the primary table's columns, each optional; unknown fields are refused."""
    definitions: dict[str, Any] = {name: (FIELD_TYPES[kind] | None, None) for name, kind in fields.items()}
    return create_model("Record", __config__=ConfigDict(extra="forbid"), **definitions)


def error_text(errors: list[dict[str, Any]]) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors)


def build_http_app(backend: Backend, args: ServingArgs) -> FastAPI:
    config = args.serving
    name = args.model_name
    auth = Authenticator(config.auth)
    Record = record_model(args.record_fields)
    PredictRequest = create_model(
        "PredictRequest",
        __config__=ConfigDict(extra="forbid"),
        model=(str | None, Field(None, description="registered model name; optional")),
        records=(list[Record], Field(min_length=1, max_length=config.max_records)),  # type: ignore[valid-type]
    )

    class PredictResponse(BaseModel):
        model: str
        version: str
        predictions: list[float | None]
        cache_hits: int

    app = FastAPI(
        title="Fusion serving",
        description=f"Predictions of the `{config.alias}` version of `{name}` (MLflow registry).",
        strict_content_type=False,  # tritonclient and curl -d send no or a form Content-Type
    )
    app.add_middleware(BodyLimit, max_bytes=config.max_body_bytes)
    registry = CollectorRegistry()
    requests = Counter(
        "fusion_serving_requests", "HTTP requests by route and status", ["route", "code"], registry=registry
    )
    seconds = Histogram(
        "fusion_serving_request_seconds",
        "time in the ingress replica per request",
        ["route"],
        buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
        registry=registry,
    )

    @app.middleware("http")
    async def measure(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        route = getattr(request.scope.get("route"), "path", "other")
        requests.labels(route, str(response.status_code)).inc()
        seconds.labels(route).observe(time.perf_counter() - started)
        return response

    guarded = [Depends(auth)]
    errors: dict[int | str, dict[str, Any]] = {
        401: {"description": "missing or invalid bearer token (when auth is on)"},
        403: {"description": "token lacks the required scope"},
        413: {"description": "body over the size limit"},
        422: {"description": "invalid body; names the field"},
        503: {"description": "no model loaded yet"},
    }

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, exc: RequestValidationError) -> JSONResponse:
        if "inference-header-content-length" in request.headers:
            message = "binary tensor data is not supported: send JSON tensors (binary_data=False)"
            return JSONResponse({"error": message}, status_code=400)
        details = jsonable_encoder(exc.errors())
        return JSONResponse({"error": error_text(details), "detail": details}, status_code=422)

    @app.exception_handler(BadInput)
    async def bad_input(request: Request, exc: BadInput) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=422)

    @app.exception_handler(NotReady)
    async def not_ready(request: Request, exc: NotReady) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=503)

    def known(model_name: str) -> None:
        if model_name != name:
            raise _NotFound(f"unknown model {model_name!r}: this server serves {name!r}")

    @app.exception_handler(_NotFound)
    async def not_found(request: Request, exc: _NotFound) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=404)

    async def predict(body: PredictRequest) -> dict[str, Any]:  # type: ignore[valid-type]
        """Raw records (the primary table's fields) -> probabilities; features computed as in training,
        stateful ones from the online store."""
        if body.model is not None:  # type: ignore[attr-defined]
            known(body.model)  # type: ignore[attr-defined]
        records = [r.model_dump() for r in body.records]  # type: ignore[attr-defined]
        return await backend.predict_records(records)

    # The request model is built at run time, so FastAPI must see the class, not the string
    # annotation that `from __future__ import annotations` leaves.
    predict.__annotations__["body"] = PredictRequest
    app.post("/v1/predict", response_model=PredictResponse, dependencies=guarded, responses={**errors, 404: {}})(
        predict
    )

    @app.post(
        "/invocations",
        dependencies=guarded,
        responses=errors,
        openapi_extra={
            "requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}}
        },
    )
    async def invocations(request: Request) -> Response:
        """MLflow's scoring protocol: dataframe_split, dataframe_records, instances or inputs (model input columns)."""
        info = await ready_info()
        content_type = request.headers.get("content-type", "application/json").split(";")[0].strip()
        if content_type not in ("application/json", ""):
            return JSONResponse(
                {
                    "error_code": "BAD_REQUEST",
                    "message": f"unsupported content type {content_type!r}: send application/json",
                },
                status_code=415,
            )
        frame = mlflow_frame(await request.body(), info)
        result = await backend.predict_frame(frame)
        return JSONResponse({"predictions": result["predictions"]}, headers=version_header(result))

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        """Liveness, and which version answers (ready is false until a model is loaded)."""
        info = await backend.info()
        return {"status": "ok", "ready": info is not None, "model": name, "version": info and info["version"]}

    @app.get("/metrics", response_class=Response)
    async def metrics() -> Response:
        body, media_type = merged_exposition([list(registry.collect()), *await backend.metric_snapshots()])
        return Response(body, media_type=media_type)

    # Open Inference Protocol v2 (KServe / Triton REST)
    @app.get("/v2")
    async def server_metadata() -> dict[str, Any]:
        return {"name": "fusion", "version": "1", "extensions": []}

    @app.get("/v2/health/live")
    async def live() -> dict[str, bool]:
        return {"live": True}

    @app.get("/v2/health/ready", responses={503: {}})
    async def ready() -> Response:
        info = await backend.info()
        return JSONResponse({"ready": info is not None}, status_code=200 if info else 503)

    @app.get("/v2/models/{model_name}", responses={404: {}, 503: {}})
    async def model_metadata(model_name: str) -> dict[str, Any]:
        known(model_name)
        info = await ready_info()
        return {
            "name": name,
            "versions": [info["version"]],
            "platform": "mlflow_pyfunc",
            "inputs": [
                {"name": n, "datatype": "BYTES" if t == "string" else "FP64", "shape": [-1]} for n, t in info["inputs"]
            ],
            "outputs": [{"name": "probability", "datatype": "FP64", "shape": [-1]}],
        }

    @app.get("/v2/models/{model_name}/ready", responses={404: {}})
    async def model_ready(model_name: str) -> Response:
        known(model_name)
        info = await backend.info()
        return JSONResponse({"name": name, "ready": info is not None}, status_code=200 if info else 503)

    @app.post("/v2/models/{model_name}/infer", dependencies=guarded, responses={**errors, 400: {}, 404: {}})
    async def infer(model_name: str, body: OipRequest) -> Response:
        """One tensor per model input column, shape [n]; returns `probability`, shape [n]."""
        known(model_name)
        info = await ready_info()
        result = await backend.predict_frame(oip_frame(body, info))
        payload = {
            "model_name": name,
            "model_version": result["version"],
            "id": body.id,
            "outputs": [
                {
                    "name": "probability",
                    "shape": [len(result["predictions"])],
                    "datatype": "FP64",
                    "data": result["predictions"],
                }
            ],
        }
        return JSONResponse({k: v for k, v in payload.items() if v is not None}, headers=version_header(result))

    async def ready_info() -> dict[str, Any]:
        info = await backend.info()
        if info is None:
            raise NotReady(f"no {config.alias!r} version of {name!r} is loaded yet")
        return info

    return app


class _NotFound(Exception):
    pass


def version_header(result: dict[str, Any]) -> dict[str, str]:
    return {"X-Fusion-Model-Version": str(result["version"])}


def typed_frame(columns: dict[str, list[Any]], info: dict[str, Any], where: Callable[[str], str]) -> pl.DataFrame:
    """Model-input columns cast to the signature (string or double); absent ones are null."""
    types = dict(info["inputs"])
    unknown = [c for c in columns if c not in types]
    if unknown:
        raise BadInput(f"{where(unknown[0])}: not a model input (inputs: {', '.join(types)})")
    lengths = {len(v) for v in columns.values()}
    rows = lengths.pop() if len(lengths) == 1 else None
    if rows is None:
        raise BadInput("inputs have different numbers of rows")
    series = []
    for column, kind in types.items():
        values = columns.get(column, [None] * rows)
        try:
            if kind == "string":
                series.append(pl.Series(column, [None if v is None else str(v) for v in values], dtype=pl.String))
            else:
                series.append(pl.Series(column, [_number(v) for v in values], dtype=pl.Float64))
        except (TypeError, ValueError) as exc:
            raise BadInput(f"{where(column)}: {exc}") from exc
    return pl.DataFrame(series)


def _number(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool | int | float):
        return float(value)
    raise TypeError(f"expected a number, got {value!r}")


def mlflow_frame(body: bytes, info: dict[str, Any]) -> pl.DataFrame:
    """MLflow's scoring formats -> typed model-input rows. The common case (dataframe_split or
    dataframe_records whose values already have the signature's types) is read directly: MLflow's
    own parser builds and casts a pandas frame, ~5 ms a request. Anything else goes to that parser,
    so behaviour and error messages stay MLflow's."""
    columns = plain_mlflow_columns(body, dict(info["inputs"]))
    if columns is not None:
        return typed_frame(columns, info, lambda c: f"column {c!r}")
    return parsed_mlflow_frame(body, info)


def plain_mlflow_columns(body: bytes, types: dict[str, str]) -> dict[str, list[Any]] | None:
    """Columns of a plain dataframe_split/dataframe_records body, or None for MLflow's parser."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, dict) or len(doc) != 1:
        return None
    columns: dict[str, list[Any]]
    if "dataframe_split" in doc:
        split = doc["dataframe_split"]
        if not isinstance(split, dict) or set(split) != {"columns", "data"}:
            return None
        names, data = split["columns"], split["data"]
        if not isinstance(names, list) or not isinstance(data, list) or len(set(map(str, names))) != len(names):
            return None
        if not all(isinstance(row, list) and len(row) == len(names) for row in data):
            return None
        columns = {str(name): [row[j] for row in data] for j, name in enumerate(names)}
    elif "dataframe_records" in doc:
        records = doc["dataframe_records"]
        if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
            return None
        names = list(dict.fromkeys(k for r in records for k in r))
        columns = {name: [r.get(name) for r in records] for name in names}
    else:
        return None
    if not columns or not all(columns.values()) or any(name not in types for name in columns):
        return None
    for name, values in columns.items():
        if types[name] == "string":
            plain = all(v is None or isinstance(v, str) for v in values)
        else:
            plain = all(v is None or (isinstance(v, int | float) and not isinstance(v, bool)) for v in values)
        if not plain:
            return None
    return columns


def parsed_mlflow_frame(body: bytes, info: dict[str, Any]) -> pl.DataFrame:
    from mlflow.exceptions import MlflowException
    from mlflow.pyfunc.scoring_server import _parse_json_data
    from mlflow.types import Schema

    try:
        parsed = _parse_json_data(body, None, Schema.from_json(json.dumps(info["input_schema"])))
    except MlflowException as exc:
        raise BadInput(exc.message) from exc
    data = parsed.data
    frame = data if isinstance(data, pd.DataFrame) else pd.DataFrame(data)
    columns = {str(c): [None if _missing(v) else v for v in frame[c].tolist()] for c in frame.columns}
    return typed_frame(columns, info, lambda c: f"column {c!r}")


def _missing(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def oip_frame(body: OipRequest, info: dict[str, Any]) -> pl.DataFrame:
    types = dict(info["inputs"])
    columns: dict[str, list[Any]] = {}
    for i, tensor in enumerate(body.inputs):
        where = f"inputs[{i}] ({tensor.name})"
        kind = types.get(tensor.name)
        if kind is None:
            raise BadInput(f"{where}: not a model input (inputs: {', '.join(types)})")
        if len(tensor.shape) == 2 and tensor.shape[1] != 1:
            raise BadInput(f"{where}: shape {tensor.shape}: one column per input, so [n] or [n, 1]")
        data = _flatten(tensor.data)
        if len(data) != tensor.shape[0]:
            raise BadInput(f"{where}: shape {tensor.shape} needs {tensor.shape[0]} values, data has {len(data)}")
        expected: Literal["BYTES", "numeric"] = "BYTES" if kind == "string" else "numeric"
        if (expected == "BYTES") != (tensor.datatype == "BYTES") or (
            expected == "numeric" and tensor.datatype not in NUMERIC_OIP
        ):
            want = "BYTES" if expected == "BYTES" else "a numeric type (FP64, FP32, INT64, ...)"
            raise BadInput(f"{where}: datatype {tensor.datatype} does not fit a {kind} input; send {want}")
        columns[tensor.name] = data
    return typed_frame(columns, info, lambda c: f"input {c!r}")


def _flatten(values: list[Any]) -> list[Any]:
    flat: list[Any] = []
    for v in values:
        flat.extend(_flatten(v) if isinstance(v, list) else [v])
    return flat
