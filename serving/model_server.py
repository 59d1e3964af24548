"""The model side of serving, without HTTP: follows the registry alias, caches predictions per
row, reads online features, predicts several requests' rows in one model call.

`ModelCore` is plain asyncio and runs without Ray; serving/app.py makes it the Ray Serve deployment
`ModelServer`, which puts the HTTP adapter in front and @serve.batch in front of `predict_many`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import numpy as np
import polars as pl
from prometheus_client.metrics_core import Metric
from pydantic import BaseModel

from fusion.core import tracing
from fusion.core.errors import TypeMismatch
from fusion.core.lake import Lake
from fusion.core.settings import DatasetConfig, KafkaSecurity, ServingConfig
from serving.breaker import CircuitBreaker
from serving.guarded_redis import GuardedRedis
from serving.metrics import ServingMetrics
from serving.online_features import OnlineFeatures, RedisOnlineFeatures, memory_online_features
from serving.prediction_cache import PredictionCache
from serving.predictor import LoadedModel, ModelVersion, champion
from tasks.online_store import load_into_redis, namespace, read_snapshot

log = logging.getLogger("fusion.serving")
T = TypeVar("T")
# Work on at most this many rows (typing and the cache lookup, the model call, the cache write) runs on
# the replica's event loop; larger requests go to a worker thread and leave the loop free. A hop to a
# thread and back costs more than a few rows' work: under load each one waits for the GIL twice, and on
# two cores that made a cache miss cost ~2x the CPU of a hit (docs/BENCHMARKS.md, serving profile).
INLINE_ROWS = 64


async def near(rows: int, fn: Callable[..., T], *args: Any) -> T:
    """`fn(*args)` on the event loop for at most INLINE_ROWS rows, else in a worker thread."""
    return fn(*args) if rows <= INLINE_ROWS else await asyncio.to_thread(fn, *args)


class ServingArgs(BaseModel):
    """Everything a replica needs, as plain data (it crosses to Ray actors)."""

    model_name: str
    record_fields: dict[str, str]  # the primary table's columns and types (the /v1/predict record)
    tracking_uri: str
    lake_uri: str
    # or `env:NAME`: the URL is read from the replica's environment (a URL with a password stays out of
    # the Serve config that RayService and `serve status` show; infra/terraform uses env:FUSION_REDIS_URL)
    redis_url: str | None = None
    kafka_bootstrap_servers: str | None = None
    promoted_topic: str = "fusion.model.promoted"
    kafka_security: KafkaSecurity = KafkaSecurity()
    serving: ServingConfig = ServingConfig()
    # the replicas' log files (absolute: a replica's working folder is Ray's); None: Ray's session folder,
    # logs/serve, where a RayService's log sidecar reads them
    logs_dir: str | None = None

    def resolved_redis_url(self) -> str | None:
        """The Redis URL, `env:NAME` read here (in the replica); an unset variable is an error naming it."""
        if self.redis_url is None or not self.redis_url.startswith("env:"):
            return self.redis_url
        name = self.redis_url.removeprefix("env:")
        value = os.environ.get(name)
        if not value:
            raise RuntimeError(f"serving redis_url is {self.redis_url} but {name} is not set in the replica")
        return value


class NotReady(Exception):
    """No model loaded yet (no champion in the registry)."""


class ModelCore:
    def __init__(self, args: ServingArgs | dict[str, Any]) -> None:
        self.args = ServingArgs.model_validate(args)
        config = self.args.serving
        self.redis: GuardedRedis | None = None
        redis_url = self.args.resolved_redis_url()
        if redis_url:
            breaker = CircuitBreaker(config.breaker_failures, config.breaker_cooldown_s)
            self.redis = GuardedRedis(redis_url, config.redis_timeout_ms / 1000, breaker)
        self.cache = PredictionCache(self.redis, self.args.model_name, config.cache_ttl_s)
        self.model: LoadedModel | None = None
        self.online: OnlineFeatures | None = None
        self._reload_lock = asyncio.Lock()
        self._poller: asyncio.Task[None] | None = None
        self.metrics = ServingMetrics()
        self.replica = "local"
        # spans only when they go somewhere (each costs CPU per request): FastAPI's per request (it makes
        # them once a provider is set), and Fusion's of the cache lookup, the model and a reload
        self.traced = tracing.exporting()
        if self.traced:
            tracing.setup_tracing("fusion-serving")

    @contextlib.contextmanager
    def step(self, name: str, **attributes: Any) -> Iterator[None]:
        """A span around one step of a request, when traced."""
        if not self.traced:
            yield
            return
        with tracing.span(name, attributes=attributes):
            yield

    async def start(self) -> None:
        """Load the current champion if there is one (else stay not ready) and follow the alias.
        A failing registry does not stop the start: the poller tries again."""
        try:
            await self.reload_now()
        except Exception:
            log.exception("initial model load failed")
        self._poller = asyncio.create_task(self._poll_forever())

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(self.args.serving.poll_s)
            try:
                await self.reload_now()
            except Exception:  # keep serving the loaded version; the next poll tries again
                log.exception("alias check failed")
            model = self.model
            if model is not None:
                await asyncio.to_thread(self._warm_online, model.dataset)

    async def reload_now(self, traceparent: str | None = None) -> str | None:
        """Load the version the alias points at, if it is not the one loaded; returns the served version.
        `traceparent`: the promotion event's, when a promotion caused this (the load's span joins its trace)."""
        async with self._reload_lock:
            target = await asyncio.to_thread(
                champion, self.args.tracking_uri, self.args.model_name, self.args.serving.alias
            )
            if target is None or (self.model is not None and self.model.version == target):
                return self.version
            attributes = {"fusion.model": target.name, "fusion.version": target.version, "fusion.replica": self.replica}
            try:
                with (
                    tracing.span("serving reload", traceparent, attributes) if self.traced else contextlib.nullcontext()
                ):
                    model, online = await asyncio.to_thread(self._load, target)
            except Exception:
                self.metrics.loads.labels("failed").inc()
                raise
            # One assignment each: a request that already took the old pair finishes on it.
            self.model, self.online = model, online
            self.metrics.loads.labels("loaded").inc()
            log.info("serving %s version %s (loaded in %.1f s)", target.name, target.version, model.load_seconds)
            return self.version

    def _load(self, target: ModelVersion) -> tuple[LoadedModel, OnlineFeatures]:
        model = LoadedModel(self.args.tracking_uri, target)
        dataset = model.dataset
        if self.redis is None:
            return model, memory_online_features(self.args.lake_uri, dataset)
        self._warm_online(dataset)
        return model, RedisOnlineFeatures(self.redis, dataset.name, dataset.features.version)

    def _warm_online(self, dataset: DatasetConfig) -> None:
        """Load the lake snapshot of the online state into Redis when Redis lacks it (a run without
        Redis, or Redis restarted: infra/local's keeps nothing). Checked at every load and poll, through
        the breaker: once its cooldown has passed, this check is its trial call, so a replica that gets no
        requests still finds Redis back and closes its circuit."""
        if self.redis is None:
            return
        ns = namespace(dataset.name, dataset.features.version)
        if self.redis.exists(f"{ns}:current") is not False:  # present, or Redis down: the next poll looks again
            return
        snapshot = read_snapshot(Lake(self.args.lake_uri), dataset.name, dataset.features.version)
        if snapshot is None:
            return
        try:
            written = load_into_redis(self.redis.client, dataset.features, *snapshot)
            log.warning("online state was not in Redis: loaded %d keys of %s from the lake", written, ns)
        except Exception:
            log.warning("could not load online features into Redis (%s)", ns)

    @property
    def version(self) -> str | None:
        return None if self.model is None else self.model.version.version

    def info(self) -> dict[str, Any] | None:
        return None if self.model is None else self.model.info()

    def require_model(self) -> LoadedModel:
        model = self.model
        if model is None:
            raise NotReady(f"no {self.args.serving.alias!r} version of {self.args.model_name!r} is loaded yet")
        return model

    async def predict_records(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        """Raw records (the primary table's fields) -> probabilities, features computed here."""
        model, online = self.require_model(), self.online
        assert online is not None  # swapped together with the model
        prepared = await asyncio.to_thread(self._prepare_records, model, online, records)
        return await self._finish(model, "records", *prepared)

    async def predict_frame(self, frame: pl.DataFrame, model: LoadedModel | None = None) -> dict[str, Any]:
        """Model-input rows (the signature's columns) -> probabilities; `model`: the version the rows were
        typed for (default: the one loaded now)."""
        model = model or self.require_model()
        prepared = await near(frame.height, self._prepare_frame, model, frame)
        return await self._finish(model, "features", *prepared)

    async def predict_columns(
        self, model: LoadedModel, columns: dict[str, list[Any]], typed: Callable[[], pl.DataFrame]
    ) -> dict[str, Any]:
        """Model-input rows as the client sent them (column -> JSON values, equal lengths): looked up in the
        cache by those values first, so a request whose rows are all cached is answered without typing
        them. Otherwise `typed()` types the whole request (its errors number rows as the client did) and
        the rows not cached go to the model. The same row spelled otherwise ("1.5" for 1.5) is an entry of
        its own with the same prediction: a key never stands for two different typed rows."""
        rows = len(next(iter(columns.values()), []))
        prepared = await near(rows, self._prepare_columns, model, columns, rows, typed)
        return await self._finish(model, "features", *prepared)

    def _prepare_columns(
        self, model: LoadedModel, columns: dict[str, list[Any]], rows: int, typed: Callable[[], pl.DataFrame]
    ) -> tuple[list[str], list[float | None], pl.DataFrame | None]:
        sent = [{name: values[i] for name, values in columns.items()} for i in range(rows)]
        return self._look_up(self.cache.keys(model.version.content_id, "json", sent), typed)

    def _look_up(
        self, keys: list[str], frame: Callable[[], pl.DataFrame]
    ) -> tuple[list[str], list[float | None], pl.DataFrame | None]:
        """The cached predictions of the rows `keys` name, and `frame()`'s rows that are not cached (None
        when all are: `frame` is not called)."""
        with self.step("cache lookup", rows=len(keys)):
            cached = self.cache.get(keys)
        missing = [i for i, v in enumerate(cached) if v is None]
        if not missing:
            return keys, cached, None
        rows = frame()
        return keys, cached, rows if len(missing) == rows.height else rows[missing]

    def _prepare_records(
        self, model: LoadedModel, online: OnlineFeatures, records: list[dict[str, Any]]
    ) -> tuple[list[str], list[float | None], pl.DataFrame | None]:
        # Raw rows are keyed with the online batch too: new online state means new features.
        keys = self.cache.keys(model.version.content_id, f"records:{online.batch_id()}", records)
        with self.step("cache lookup", rows=len(keys)):
            cached = self.cache.get(keys)
        missing = [i for i, v in enumerate(cached) if v is None]
        if not missing:
            return keys, cached, None
        try:
            frame, defaults = model.features([records[i] for i in missing], online)
        except TypeMismatch:
            model.records_frame(records)  # the same refusal, its rows numbered as in the request
            raise
        for part, n in defaults.items():
            if n:
                self.metrics.defaults.labels(part).inc(n)
        return keys, cached, frame

    def _prepare_frame(
        self, model: LoadedModel, frame: pl.DataFrame
    ) -> tuple[list[str], list[float | None], pl.DataFrame | None]:
        return self._look_up(self.cache.keys(model.version.content_id, "features", frame.to_dicts()), lambda: frame)

    async def _finish(
        self, model: LoadedModel, kind: str, keys: list[str], cached: list[float | None], frame: pl.DataFrame | None
    ) -> dict[str, Any]:
        predictions = list(cached)
        hits = sum(v is not None for v in cached)
        if frame is not None:
            with self.step("model", rows=frame.height, version=model.version.version):
                computed = await self.predict_batch((model, frame))
            missing = [i for i, v in enumerate(cached) if v is None]
            fresh = {}
            for i, p in zip(missing, computed.tolist(), strict=True):
                predictions[i] = p
                fresh[keys[i]] = p
            if self.redis is not None and len(fresh) <= INLINE_ROWS:
                self.cache.put(fresh)  # one pipelined write, bounded by redis_timeout_ms and the breaker
            elif self.redis is not None:
                asyncio.get_running_loop().run_in_executor(None, self.cache.put, fresh)
        self.metrics.rows.labels(kind).inc(len(predictions))
        self.metrics.hits.inc(hits)
        self.metrics.misses.inc(len(predictions) - hits)
        return {
            "model": model.version.name,
            "version": model.version.version,
            "predictions": predictions,
            "cache_hits": hits,
        }

    async def predict_batch(self, item: tuple[LoadedModel, pl.DataFrame]) -> np.ndarray:
        """One request's rows through the model; the Ray deployment merges concurrent requests here."""
        (predicted,) = await self.predict_many([item])
        return predicted

    async def predict_many(self, items: list[tuple[LoadedModel, pl.DataFrame]]) -> list[np.ndarray]:
        """Several requests' rows in one model call per model version (a reload may be mid-batch)."""
        out: list[np.ndarray | None] = [None] * len(items)
        by_model: dict[int, list[int]] = {}
        for i, (model, _) in enumerate(items):
            by_model.setdefault(id(model), []).append(i)
        for indexes in by_model.values():
            model = items[indexes[0]][0]
            frames = [items[i][1] for i in indexes]
            merged = pl.concat(frames, how="vertical_relaxed") if len(frames) > 1 else frames[0]
            self.metrics.batch_rows.observe(merged.height)
            predicted = await near(merged.height, model.predict, merged)
            offsets = np.cumsum([f.height for f in frames])[:-1]
            for i, part in zip(indexes, np.split(predicted, offsets), strict=True):
                out[i] = part
        return out  # type: ignore[return-value]

    def metrics_snapshot(self) -> tuple[str, list[Metric]]:
        """This replica's id and metric families (HTTP and model), for /metrics on any replica."""
        self.metrics.version.set(float(self.version) if self.version else 0.0)
        if self.redis is not None:
            self.metrics.redis_failures.set(self.redis.failures)
            self.metrics.redis_skipped.set(self.redis.skipped)
            self.metrics.breaker_open.set(int(self.redis.breaker.state != "closed"))
        return self.replica, self.metrics.families()

    async def metric_snapshots(self) -> list[tuple[str, list[Metric]]]:
        """Every replica's snapshot; without Ray there is one replica, this one."""
        return [self.metrics_snapshot()]

    async def stop(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
        if self.redis is not None:
            self.redis.close()
