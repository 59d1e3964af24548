"""The HTTP side of serving (FastAPI): routes, request shapes, auth, body limit, error shapes.

Built per replica by `build_http_app(backend, args)`, so the /v1/predict record schema comes from the
dataset config. `backend` does the work: in Ray Serve, the ModelCore of the same replica (serving/app.py).
Request values are typed by tasks/schema.py, the function ingest uses (serving/protocols.py).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import polars as pl
from fastapi import Depends, FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.params import Depends as DependsParam
from fastapi.responses import JSONResponse, Response
from opentelemetry import trace
from prometheus_client.metrics_core import Metric
from pydantic import BaseModel, ConfigDict, Field, create_model
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fusion.core.errors import TypeMismatch
from fusion.core.tracing import context_from
from serving.auth import Authenticator
from serving.metrics import ServingMetrics, replicas_exposition
from serving.model_server import NotReady, ServingArgs
from serving.predictor import LoadedModel
from serving.protocols import (
    BadInput,
    OipRequest,
    checked_inputs,
    column_field,
    mlflow_columns,
    oip_columns,
    typed_inputs,
)

JsonScalar = str | int | float | bool
access = logging.getLogger("fusion.serving.access")
ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "missing or invalid bearer token (when auth is on)"},
    403: {"description": "token lacks the required scope"},
    413: {"description": "body over the size limit"},
    415: {"description": "a body that is not JSON (send Content-Type: application/json)"},
    422: {"description": "invalid body; names the field"},
    503: {"description": "no model loaded yet"},
}


class Backend(Protocol):
    metrics: ServingMetrics

    def require_model(self) -> LoadedModel: ...
    def info(self) -> dict[str, Any] | None: ...
    async def predict_records(self, records: list[dict[str, Any]]) -> dict[str, Any]: ...
    async def predict_frame(self, frame: pl.DataFrame, model: LoadedModel | None = None) -> dict[str, Any]: ...
    async def predict_columns(
        self, model: LoadedModel, columns: dict[str, list[Any]], typed: Callable[[], pl.DataFrame]
    ) -> dict[str, Any]: ...
    async def metric_snapshots(self) -> list[tuple[str, list[Metric]]]: ...


class _NotFound(Exception):
    pass


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


def record_model(fields: dict[str, str]) -> type[BaseModel]:
    """The /v1/predict record: the primary table's columns, each optional; unknown fields are refused.
    Values are JSON scalars here and typed by the table's declared types afterwards, as ingest does."""
    definitions: dict[str, Any] = {
        name: (JsonScalar | None, Field(None, description=f"{kind} (as in the training table)"))
        for name, kind in fields.items()
    }
    return create_model("Record", __config__=ConfigDict(extra="forbid"), **definitions)


def error_text(errors: list[dict[str, Any]]) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors)


def build_http_app(backend: Backend, args: ServingArgs) -> FastAPI:
    config = args.serving
    app = FastAPI(
        title="Fusion serving",
        description=f"Predictions of the `{config.alias}` version of `{args.model_name}` (MLflow registry).",
        strict_content_type=False,  # tritonclient sends no Content-Type: read as JSON (a form type: 415)
    )
    app.add_middleware(BodyLimit, max_bytes=config.max_body_bytes)
    measure_requests(app, backend.metrics, config.access_log)
    answer_errors(app)
    guarded = [Depends(Authenticator(config.auth))]
    add_predict(app, backend, args, guarded)
    add_invocations(app, backend, guarded)
    add_open_inference(app, backend, args.model_name, guarded)
    add_health_and_metrics(app, backend, args.model_name)
    return app


def measure_requests(app: FastAPI, metrics: ServingMetrics, access_log: bool = False) -> None:
    """Requests and seconds per route and status, an unhandled error counted as the 500 it becomes; with
    `access_log` a line per request (`fusion.serving.access`). (The request's server span, a child of the
    caller's `traceparent`, is FastAPI's own once a tracer provider is set: serving/model_server.py.)"""

    @app.middleware("http")
    async def measure(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        started = time.perf_counter()
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            seconds = time.perf_counter() - started
            route = getattr(request.scope.get("route"), "path", "other")
            metrics.requests.labels(route, str(status)).inc()
            metrics.seconds.labels(route).observe(seconds)
            if access_log:
                log_access(request, route, status, seconds)


def log_access(request: Request, route: str, status: int, seconds: float) -> None:
    """One access line: what Serve's own access log says (method, path, status, latency) plus the route,
    the request id (Serve's `X-Request-ID`), the client and the trace id, as Fusion's record fields."""
    fields = {
        "method": request.method,
        "path": request.url.path,
        "route": route,
        "status": status,
        "latency_ms": round(seconds * 1000, 3),
        "request_id": request.headers.get("x-request-id"),
        "client": request.client.host if request.client else None,
    }
    # on the record itself, not left to the formatter: a handler may format it later, outside the span
    span = trace.get_current_span().get_span_context()
    ids = (
        {"trace_id": f"{span.trace_id:032x}", "span_id": f"{span.span_id:016x}"}
        if span.is_valid
        else caller_trace(request)
    )
    message = "%s %s %d %.1fms"
    access.info(message, request.method, request.url.path, status, seconds * 1000, extra={"fields": fields, **ids})


def caller_trace(request: Request) -> dict[str, str]:
    """The trace id of the caller's `traceparent` header, for a line logged with no span current (no
    tracer provider set): the request's line still joins the caller's trace."""
    parent = context_from(request.headers.get("traceparent"))
    found = trace.get_current_span(parent).get_span_context() if parent is not None else None
    return {"trace_id": f"{found.trace_id:032x}"} if found is not None and found.is_valid else {}


def answer_errors(app: FastAPI) -> None:
    """Every refusal as JSON naming the field: 422 bad body, 404 unknown model, 503 not ready."""

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, exc: RequestValidationError) -> JSONResponse:
        if "inference-header-content-length" in request.headers:
            message = "binary tensor data is not supported: send JSON tensors (binary_data=False)"
            return JSONResponse({"error": message}, status_code=400)
        details = jsonable_encoder(exc.errors())
        content_type = request.headers.get("content-type", "").split(";")[0].strip()
        if content_type and "json" not in content_type and any(list(e["loc"]) == ["body"] for e in details):
            # the body was read as text (`curl -d` sends a form type): say what to send instead
            message = f"unsupported content type {content_type!r}: send application/json"
            return JSONResponse({"error": message}, status_code=415)
        return JSONResponse({"error": error_text(details), "detail": details}, status_code=422)

    @app.exception_handler(BadInput)
    async def bad_input(request: Request, exc: BadInput) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=422)

    @app.exception_handler(TypeMismatch)
    async def bad_record(request: Request, exc: TypeMismatch) -> JSONResponse:
        row = f"{exc.rows[0]}." if exc.rows else ""
        return JSONResponse({"error": f"records.{row}{exc.column}: {exc.reason}"}, status_code=422)

    @app.exception_handler(NotReady)
    async def not_ready(request: Request, exc: NotReady) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=503)

    @app.exception_handler(_NotFound)
    async def not_found(request: Request, exc: _NotFound) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=404)


def known(model_name: str, served: str) -> None:
    if model_name != served:
        raise _NotFound(f"unknown model {model_name!r}: this server serves {served!r}")


def add_predict(app: FastAPI, backend: Backend, args: ServingArgs, guarded: list[DependsParam]) -> None:
    """POST /v1/predict: raw records of the primary table; features computed as in training."""
    record = record_model(args.record_fields)
    request_model = create_model(
        "PredictRequest",
        __config__=ConfigDict(extra="forbid"),
        model=(str | None, Field(None, description="registered model name; optional")),
        records=(list[record], Field(min_length=1, max_length=args.serving.max_records)),  # type: ignore[valid-type]
    )

    class PredictResponse(BaseModel):
        model: str
        version: str
        predictions: list[float | None]
        cache_hits: int

    async def predict(body: Any) -> dict[str, Any]:
        """Raw records (the primary table's fields) -> probabilities; features computed as in training,
        stateful ones from the online store."""
        if body.model is not None:
            known(body.model, args.model_name)
        return await backend.predict_records([r.model_dump(exclude_unset=True) for r in body.records])

    # The request model is built at run time, so FastAPI must see the class itself.
    predict.__annotations__["body"] = request_model
    app.post("/v1/predict", response_model=PredictResponse, dependencies=guarded, responses={**ERRORS, 404: {}})(
        predict
    )


def add_invocations(app: FastAPI, backend: Backend, guarded: list[DependsParam]) -> None:
    """POST /invocations: MLflow's scoring protocol, as `mlflow models serve` answers it."""

    @app.post(
        "/invocations",
        dependencies=guarded,
        responses=ERRORS,
        openapi_extra={
            "requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}}
        },
    )
    async def invocations(request: Request) -> Response:
        """dataframe_split, dataframe_records, instances or inputs, over the model's input columns."""
        model = backend.require_model()
        content_type = request.headers.get("content-type", "application/json").split(";")[0].strip()
        if content_type not in ("application/json", ""):
            message = f"unsupported content type {content_type!r}: send application/json"
            return JSONResponse({"error_code": "BAD_REQUEST", "message": message}, status_code=415)
        columns, row_field = mlflow_columns(await request.body())
        checked_inputs(model, columns, column_field)
        # typed only when a row is not cached: a cache hit costs parsing, one Redis MGET and the answer
        result = await backend.predict_columns(
            model, columns, lambda: typed_inputs(model, columns, column_field, row_field)
        )
        return JSONResponse({"predictions": result["predictions"]}, headers=version_header(result))


def add_open_inference(app: FastAPI, backend: Backend, name: str, guarded: list[DependsParam]) -> None:
    """Open Inference Protocol v2 (KServe / Triton REST), JSON tensors."""

    @app.get("/v2")
    async def server_metadata() -> dict[str, Any]:
        return {"name": "fusion", "version": "1", "extensions": []}

    @app.get("/v2/health/live")
    async def live() -> dict[str, bool]:
        return {"live": True}

    @app.get("/v2/health/ready", responses={503: {}})
    async def ready() -> Response:
        loaded = backend.info() is not None
        return JSONResponse({"ready": loaded}, status_code=200 if loaded else 503)

    @app.get("/v2/models/{model_name}", responses={404: {}, 503: {}})
    async def model_metadata(model_name: str) -> dict[str, Any]:
        known(model_name, name)
        info = backend.require_model().info()
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
        known(model_name, name)
        loaded = backend.info() is not None
        return JSONResponse({"name": name, "ready": loaded}, status_code=200 if loaded else 503)

    @app.post("/v2/models/{model_name}/infer", dependencies=guarded, responses={**ERRORS, 400: {}, 404: {}})
    async def infer(model_name: str, body: OipRequest) -> Response:
        """One tensor per model input column, shape [n]; returns `probability`, shape [n]."""
        known(model_name, name)
        model = backend.require_model()
        by_tensor = {t.name: f"inputs[{i}] ({t.name})" for i, t in enumerate(body.inputs)}
        frame = typed_inputs(model, oip_columns(body, model), lambda c: by_tensor.get(c, f"input {c!r}"))
        result = await backend.predict_frame(frame, model)
        output = {"name": "probability", "shape": [len(result["predictions"])], "datatype": "FP64"}
        payload = {
            "model_name": name,
            "model_version": result["version"],
            "id": body.id,
            "outputs": [{**output, "data": result["predictions"]}],
        }
        return JSONResponse({k: v for k, v in payload.items() if v is not None}, headers=version_header(result))


def add_health_and_metrics(app: FastAPI, backend: Backend, name: str) -> None:
    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        """Liveness, and which version answers (ready is false until a model is loaded)."""
        info = backend.info()
        return {"status": "ok", "ready": info is not None, "model": name, "version": info and info["version"]}

    @app.get("/metrics", response_class=Response)
    async def metrics() -> Response:
        """Every replica's metrics, each series labelled with its replica (serving/metrics.py)."""
        body, media_type = replicas_exposition(await backend.metric_snapshots())
        return Response(body, media_type=media_type)


def version_header(result: dict[str, Any]) -> dict[str, str]:
    return {"X-Fusion-Model-Version": str(result["version"])}
