"""The floor of `make bench-serving`: the least an HTTP server can do around the same model call.

    FUSION_BENCH_TRACKING_URI=sqlite:///... FUSION_BENCH_MODEL=flights_delay \
        python -m uvicorn benchmarks.serving_floor:app --port 8002

One uvicorn process, one FastAPI route, MLflow's `dataframe_split` body parsed by hand into a Polars
frame and given to the same `LoadedModel.predict` a Fusion replica calls, in the event loop: no Ray,
no Redis, no validation beyond what a JSON parse does. Not a product; a yardstick.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import polars as pl
from fastapi import FastAPI, Request

from serving.predictor import LoadedModel, champion

_model: dict[str, LoadedModel] = {}


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    uri, name = os.environ["FUSION_BENCH_TRACKING_URI"], os.environ["FUSION_BENCH_MODEL"]
    version = champion(uri, name, "champion")
    if version is None:
        raise RuntimeError(f"no {name}@champion in {uri}")
    _model["m"] = LoadedModel(uri, version)
    yield


app = FastAPI(lifespan=lifespan)


@app.get("/ping")
def ping() -> dict[str, bool]:
    return {"ok": "m" in _model}


@app.post("/invocations")
async def invocations(request: Request) -> dict[str, Any]:
    split = (await request.json())["dataframe_split"]
    frame = pl.DataFrame(split["data"], schema=split["columns"], orient="row")
    return {"predictions": _model["m"].predict(frame).tolist()}
