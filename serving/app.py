"""The Ray Serve application: `Ingress` (FastAPI, serving/http.py) -> `ModelServer` (ModelCore).

`build_app(args)` is the typed app builder; `serve_forever(settings)` is what `fusion serve`
runs: a local Ray instance, Serve's HTTP proxy on the configured host and port, the app, until
SIGINT/SIGTERM.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import threading
import time
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle

from fusion.settings import Settings
from serving.http import build_http_app
from serving.model_server import ModelCore, ServingArgs

log = logging.getLogger("fusion.serving")
APP_NAME = "fusion"
QUIET = {"enable_access_log": False, "log_level": "WARNING"}


@serve.deployment(name="ModelServer")
class ModelServer(ModelCore):
    """ModelCore as a Ray Serve replica: loads the alias's version in the constructor (not ready
    when there is none yet, rather than failing the deployment) and follows it."""

    async def __init__(self, args: dict[str, Any]) -> None:  # type: ignore[misc]
        ModelCore.__init__(self, args)
        self.replica = serve.get_replica_context().replica_id.unique_id
        config = self.args.serving
        self.configure_batching(config.max_batch_size, config.batch_wait_timeout_ms)
        await self.start()
        if self.args.kafka_bootstrap_servers:
            self._listen_for_promotions(asyncio.get_running_loop())

    def _listen_for_promotions(self, loop: asyncio.AbstractEventLoop) -> None:
        """React to `fusion.model.promoted` at once instead of at the next poll."""
        from kafka import KafkaConsumer

        def listen() -> None:
            try:
                consumer = KafkaConsumer(
                    self.args.promoted_topic,
                    bootstrap_servers=self.args.kafka_bootstrap_servers,
                    group_id=None,  # every replica sees every promotion
                    auto_offset_reset="latest",
                    fetch_max_wait_ms=100,
                )
            except Exception:
                log.exception("no promotion events (Kafka unreachable); polling the alias only")
                return
            for message in consumer:
                try:
                    data = json.loads(message.value).get("data", {})
                except (ValueError, AttributeError):
                    continue
                if data.get("model_name") == self.args.model_name:
                    asyncio.run_coroutine_threadsafe(self.reload_now(), loop)

        threading.Thread(target=listen, name="promotions", daemon=True).start()

    async def __del__(self) -> None:  # Serve calls it when the replica shuts down
        await self.stop()

    async def predict_batch(self, item: tuple[Any, Any]) -> Any:
        return await self._batched(item)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.002)
    async def _batched(self, items: list[tuple[Any, Any]]) -> list[Any]:
        return await self.predict_many(items)

    def configure_batching(self, max_batch_size: int, wait_ms: float) -> None:
        self._batched.set_max_batch_size(max_batch_size)  # type: ignore[attr-defined]
        self._batched.set_batch_wait_timeout_s(wait_ms / 1000)  # type: ignore[attr-defined]


class RayBackend:
    """serving/http.py's backend inside the Ingress replica: calls the ModelServer deployment."""

    INFO_TTL_S = 1.0

    def __init__(self, model: DeploymentHandle) -> None:
        self.model = model
        self._info: dict[str, Any] | None = None
        self._info_at = -1e9

    async def predict_records(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        result: dict[str, Any] = await self.model.predict_records.remote(records)
        self._note(result)
        return result

    async def predict_frame(self, frame: Any) -> dict[str, Any]:
        result: dict[str, Any] = await self.model.predict_frame.remote(frame)
        self._note(result)
        return result

    def _note(self, result: dict[str, Any]) -> None:
        if self._info is not None and self._info["version"] != result["version"]:
            self._info_at = -1e9  # another version answered: refresh the schema at the next call

    async def info(self) -> dict[str, Any] | None:
        if self._info is None or time.monotonic() - self._info_at > self.INFO_TTL_S:
            self._info = await self.model.info.remote()
            self._info_at = time.monotonic()
        return self._info

    async def metric_snapshots(self) -> list[list[Any]]:
        results = await self.model.broadcast("metrics_snapshot").results_async(timeout_s=2, return_exceptions=True)
        return [r for r in results if isinstance(r, list)]


@serve.deployment(name="Ingress")
@serve.ingress()
class Ingress:
    def __init__(self, model: DeploymentHandle, args: dict[str, Any]) -> None:
        self.args = ServingArgs.model_validate(args)
        self.backend = RayBackend(model)

    def __serve_build_asgi_app__(self) -> Any:
        return build_http_app(self.backend, self.args)


def serving_args(settings: Settings) -> ServingArgs:
    dataset = settings.dataset
    primary = dataset.source.tables[dataset.source.primary]
    return ServingArgs(
        model_name=dataset.model.registered_name,
        record_fields=dict(primary.columns),
        tracking_uri=settings.resolved_mlflow_uri,
        lake_uri=settings.resolved_lake_uri,
        redis_url=settings.redis_url,
        kafka_bootstrap_servers=settings.kafka_bootstrap_servers,
        promoted_topic=settings.events.topic_for("fusion.model.promoted"),
        serving=settings.serving,
    )


def build_app(args: ServingArgs | dict[str, Any]) -> serve.Application:
    """The typed app builder (also `serve run serving.app:build_app`)."""
    args = ServingArgs.model_validate(args)  # a dict when Serve's CLI passes arguments
    config = args.serving
    plain = args.model_dump(mode="json")
    cpus = {"num_cpus": config.replica_cpus}
    scaling: dict[str, Any] = (
        {"autoscaling_config": config.autoscaling.model_dump()}
        if config.autoscaling
        else {"num_replicas": config.replicas}
    )
    model = ModelServer.options(  # type: ignore[attr-defined]
        ray_actor_options=cpus, max_ongoing_requests=config.max_ongoing_requests, **scaling
    ).bind(plain)
    return Ingress.options(  # type: ignore[attr-defined]
        ray_actor_options=cpus, max_ongoing_requests=config.max_ongoing_requests * 4
    ).bind(model, plain)


def start_ray() -> None:
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # 2.60 turns token auth on for new local clusters
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_SERVE_LOG_TO_STDERR", "0")
    if not ray.is_initialized():
        ray.init(
            num_cpus=os.cpu_count() or 2,
            include_dashboard=False,
            object_store_memory=256 * 1024**2,
            log_to_driver=False,
            configure_logging=False,
            namespace="fusion-serving",
        )


def start_serving(settings: Settings) -> DeploymentHandle:
    """Ray, Serve's proxy and the app; returns once every replica is up (ready or waiting for a champion)."""
    start_ray()
    config = settings.serving
    serve.start(http_options={"host": config.host, "port": config.port}, logging_config=QUIET)
    return serve.run(build_app(serving_args(settings)), name=APP_NAME, route_prefix="/", logging_config=QUIET)


def stop_serving() -> None:
    import ray

    serve.shutdown()
    ray.shutdown()


def serve_forever(settings: Settings) -> None:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    started = time.perf_counter()
    start_serving(settings)
    config = settings.serving
    print(
        f"serving {settings.dataset.model.registered_name}@{config.alias} on http://{config.host}:{config.port}"
        f" (docs: /docs) after {time.perf_counter() - started:.1f} s; Ctrl-C stops",
        flush=True,
    )
    try:
        stop.wait()
    finally:
        stop_serving()
