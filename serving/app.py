"""The Ray Serve application: one deployment, `ModelServer` (the FastAPI adapter of serving/http.py
in front of ModelCore).

`build_app(args)` is the typed app builder; `serve_forever(settings)` is what `fusion serve`
runs: a local Ray instance, Serve's HTTP proxy on the configured host and port, the app, until
SIGINT/SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ray import serve
from ray.serve.config import BackpressureConfig
from ray.serve.handle import DeploymentHandle

from fusion.core.logs import FORMAT_ENV, configure_logging, json_everywhere, log_format
from fusion.core.net import free_port
from fusion.core.settings import ServingConfig, Settings
from serving.http import build_http_app
from serving.logs import follow_in_thread, install_replica_logging
from serving.model_server import ModelCore, ServingArgs

log = logging.getLogger("fusion.serving")
APP_NAME = "fusion"
QUIET = {"enable_access_log": False, "log_level": "WARNING"}


def serve_logging(logs_dir: str | None = None) -> dict[str, Any]:
    """Serve's logging config of the app: warnings and up from Serve itself, and no Serve access log (Fusion
    writes its own, with the trace id, when `serving.access_log` is on: serving/http.py); JSON encoding
    with FUSION_LOG_FORMAT=json, which puts Serve's request fields on a replica's records for Fusion's
    formatter (serving/logs.py); the replicas' log files in `logs_dir` when given."""
    config = {**QUIET, "encoding": "JSON" if log_format() == "json" else "TEXT"}
    return config | ({"logs_dir": logs_dir} if logs_dir else {})


@serve.deployment(name="ModelServer")
@serve.ingress()
class ModelServer(ModelCore):
    """One replica = the HTTP adapter (serving/http.py, built per replica by
    `__serve_build_asgi_app__` because the record schema comes from the dataset config) in front of
    ModelCore, whose plain `predict_many` is the inference, behind @serve.batch. Loads the alias's
    version in the constructor (not ready when there is none yet, rather than failing the
    deployment) and follows it.

    Adapter and model share the replica on purpose: on two cores a separate model deployment
    costs a second Ray hop per request, about a third of the serving CPU (docs/BENCHMARKS.md).
    Replicas scale both together; a handle calls `predict_records`/`predict_frame` directly."""

    async def __init__(self, args: dict[str, Any]) -> None:  # type: ignore[misc]
        install_replica_logging()  # before anything logs: Fusion's records into the replica's log file
        ModelCore.__init__(self, args)
        context = serve.get_replica_context()
        self.replica = context.replica_id.unique_id
        # kept: a new handle learns the replica set asynchronously, so its first broadcast may miss some
        self._peers = serve.get_deployment_handle("ModelServer", context.app_name)
        config = self.args.serving
        self.configure_batching(config.max_batch_size, config.batch_wait_timeout_ms)
        await self.start()
        if self.args.kafka_bootstrap_servers:
            self._listen_for_promotions(asyncio.get_running_loop())

    def __serve_build_asgi_app__(self) -> Any:
        return build_http_app(self, self.args)

    def _listen_for_promotions(self, loop: asyncio.AbstractEventLoop) -> None:
        """React to `fusion.model.promoted` at once instead of at the next poll."""
        from kafka import KafkaConsumer

        def listen() -> None:
            try:
                consumer = KafkaConsumer(
                    self.args.promoted_topic,
                    **self.args.kafka_security.client_options(),
                    bootstrap_servers=self.args.kafka_bootstrap_servers,
                    group_id=None,  # every replica sees every promotion
                    auto_offset_reset="latest",
                    fetch_max_wait_ms=100,
                    metadata_max_age_ms=30_000,  # a topic created after the replica started is seen soon
                )
            except Exception:
                log.exception("no promotion events (Kafka unreachable); polling the alias only")
                return
            for message in consumer:
                try:
                    event = json.loads(message.value)
                    data = event.get("data", {})
                    model_name = data.get("model_name")
                except (ValueError, AttributeError):
                    continue
                if model_name == self.args.model_name:
                    # the load joins the promotion's trace (the run that promoted, and its request)
                    asyncio.run_coroutine_threadsafe(self.reload_now(event.get("traceparent")), loop)

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

    async def metric_snapshots(self) -> list[tuple[str, list[Any]]]:
        """Every replica's metrics (this one's included), for /metrics on any of them."""
        results = await self._peers.broadcast("metrics_snapshot").results_async(timeout_s=2, return_exceptions=True)
        return [r for r in results if isinstance(r, tuple)]


def serving_args(settings: Settings) -> ServingArgs:
    dataset = settings.dataset
    primary = dataset.source.tables[dataset.source.primary]
    return ServingArgs(
        model_name=dataset.model.registered_name,
        record_fields=dict(primary.columns),
        tracking_uri=settings.resolved_mlflow_uri,
        lake_uri=settings.resolved_lake_uri,
        redis_url=settings.redis_url.get_secret_value() if settings.redis_url else None,
        kafka_bootstrap_servers=settings.kafka_bootstrap_servers,
        promoted_topic=settings.events.topic_for("fusion.model.promoted"),
        kafka_security=settings.events.security,
        serving=settings.serving,
        logs_dir=str(replica_logs(settings)),
    )


def replica_logs(settings: Settings) -> Path:
    """Where `fusion serve`'s replicas write their log files: FUSION_HOME/logs/serve."""
    return (settings.home / "logs" / "serve").resolve()


def build_app(args: ServingArgs | dict[str, Any]) -> serve.Application:
    """The typed app builder (also `serve run serving.app:build_app`)."""
    args = ServingArgs.model_validate(args)  # a dict when Serve's CLI passes arguments
    config = args.serving
    plain = args.model_dump(mode="json")
    # One request's rows are few: OpenMP threads per model call cost more than they give, and spin
    # on the cores the other replicas need; so do Polars' (typing a request is many tiny frames:
    # ~5-10% more requests a second with one thread, docs/BENCHMARKS.md). Replicas, not threads,
    # scale the model out.
    threads = {name: str(config.model_threads) for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "POLARS_MAX_THREADS")}
    # the replicas log in the format the app is built with; MLflow's loggers reach the root's handler
    # there (serving/logs.py) instead of a stderr handler of their own that Serve's logger would swallow
    logging_env = {FORMAT_ENV: log_format(), "MLFLOW_CONFIGURE_LOGGING": "false"}
    options = {"num_cpus": config.replica_cpus, "runtime_env": {"env_vars": threads | logging_env}}
    scaling: dict[str, Any] = (
        {"autoscaling_config": config.autoscaling.model_dump()}
        if config.autoscaling
        else {"num_replicas": config.replicas}
    )
    # Past max_ongoing + max_queued requests a replica answers 503 with Retry-After at once, instead of
    # letting every client wait behind a queue it cannot drain (docs/BENCHMARKS.md, overload).
    backpressure = BackpressureConfig(status_code=503, retry_after_s=config.retry_after_s)
    return ModelServer.options(  # type: ignore[attr-defined]
        ray_actor_options=options,
        max_ongoing_requests=config.max_ongoing_requests,
        max_queued_requests=config.max_queued_requests,
        backpressure_config=backpressure,
        logging_config=serve_logging(args.logs_dir),  # the deployment's own: whoever runs the app gets it
        **scaling,
    ).bind(plain)


def ingress_environment(config: ServingConfig) -> dict[str, str]:
    """Ray Serve's settings for the chosen ingress, read by its processes at start (so set before Ray).

    direct: every replica serves HTTP on a port of its own and HAProxy, which Ray runs, balances
    `serving.port` over them (least connections): the request skips Serve's Python proxy and its
    gRPC hop to the replica, most of the proxy path's CPU (docs/BENCHMARKS.md). HAProxy's files,
    side ports and the replicas' ports are this server's own, so two servers on one machine do not
    collide.
    proxy: Serve's Python proxy, calling replicas over gRPC (~1.4x actor calls on two cores)."""
    if config.ingress == "proxy":
        return {
            "RAY_SERVE_ENABLE_DIRECT_INGRESS": "0",
            "RAY_SERVE_ENABLE_HA_PROXY": "0",
            "RAY_SERVE_USE_GRPC_BY_DEFAULT": "1",
        }
    # short: Ray adds a 56-character folder, and HAProxy refuses socket paths over 97 characters; mkdtemp
    # makes a new 0700 folder there
    short = Path("/tmp")  # nosec B108
    state = Path(tempfile.mkdtemp(prefix="fh", dir=short if short.is_dir() else None))
    # Replicas listen with SO_REUSEPORT: two servers on one machine given the same ports (Ray's default
    # range is one for all) would silently share them, the kernel handing one server's requests to
    # the other's replicas. Each server takes a block of ports nobody listens on, sized for its
    # replicas and their replacements (Ray holds a released port back for a while).
    most = config.autoscaling.max_replicas if config.autoscaling else config.replicas
    size = 4 * most + 16
    http, grpc = free_block(30000, 32767, size), free_block(28000, 29999, size)
    return {
        "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(http),
        "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(http + size - 1),
        "RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT": str(grpc),
        "RAY_SERVE_DIRECT_INGRESS_MAX_GRPC_PORT": str(grpc + size - 1),
        "RAY_SERVE_ENABLE_DIRECT_INGRESS": "1",
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(state / "haproxy.cfg"),
        "RAY_SERVE_HAPROXY_SOCKET_PATH": str(state / "admin.sock"),
        "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": str(state / "metrics.sock"),
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(state),
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(state / "server-state"),
        # HAProxy's backup when no replica is up: Serve's proxy, at fixed ports 8500/9500 by default,
        # where a second server's HAProxy would reach the first server's proxy (seen in the tests)
        "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(free_port(config.host)),
        "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT": str(free_port(config.host)),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port(config.host)),
        "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port(config.host)),
    }


def free_block(low: int, high: int, size: int) -> int:
    """The first port of `size` consecutive ports in [low, high] that no socket listens on (below
    Linux's ephemeral range, so outgoing connections do not take them meanwhile)."""
    for start in range(low, high - size + 2, size):
        if all(port_unused(port) for port in range(start, start + size)):
            return start
    raise RuntimeError(f"serving: no {size} consecutive free ports in {low}-{high} for the replicas")


def port_unused(port: int) -> bool:
    with socket.socket() as s:  # without SO_REUSEPORT: a port another server shares that way fails too
        try:
            s.bind(("0.0.0.0", port))  # nosec B104  # a probe, closed at once: is the port free on any address?
        except OSError:
            return False
        return True


def start_ray(config: ServingConfig) -> None:
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # 2.60 turns token auth on for new local clusters
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_SERVE_LOG_TO_STDERR", "0")
    # User code and the handle's router on the replica's own event loop (Serve's default puts each
    # on a thread of its own): one thread hop less per call, measured in docs/BENCHMARKS.md.
    os.environ.setdefault("RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD", "0")
    os.environ.setdefault("RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP", "0")
    os.environ.update(ingress_environment(config))  # the config decides, also for a second start
    if not ray.is_initialized():
        ray.init(
            num_cpus=os.cpu_count() or 2,
            include_dashboard=False,
            object_store_memory=256 * 1024**2,
            log_to_driver=False,
            configure_logging=False,
            namespace="fusion-serving",
        )


def start_serving(settings: Settings, after_ray: Callable[[], None] | None = None) -> DeploymentHandle:
    """Ray, Serve's proxy and the app; returns once every replica is up (ready or waiting for a champion).
    `after_ray` runs once Ray is up, before the app's start (`fusion serve` installs its signal handlers)."""
    config = settings.serving
    start_ray(config)
    if after_ray is not None:
        after_ray()
    serve.start(http_options={"host": config.host, "port": config.port}, logging_config=serve_logging())
    return serve.run(build_app(serving_args(settings)), name=APP_NAME, route_prefix="/")


def stop_serving() -> None:
    import ray

    serve.shutdown()
    ray.shutdown()
    state = os.environ.get("RAY_SERVE_HAPROXY_SERVER_STATE_BASE")
    if os.environ.get("RAY_SERVE_ENABLE_HA_PROXY") == "1" and state:
        # When Serve's controller does not stop within its 30 s, Ray kills the actors and the HAProxy
        # one of them started lives on, holding the serving port (seen after `fusion serve` stops)
        end_processes_under(state)
        shutil.rmtree(state, ignore_errors=True)  # HAProxy's files of this server (ingress_environment)


def end_processes_under(folder: str, timeout_s: float = 5.0) -> int:
    """Terminate (then kill) the processes with an argument in `folder` (this server's HAProxy state
    folder: Ray puts its config in a subfolder there); returns how many there were."""
    import psutil

    prefix = folder.rstrip("/") + "/"
    found = []
    for process in psutil.process_iter(["cmdline"]):
        try:
            inside = any(arg.startswith(prefix) for arg in process.info["cmdline"] or [])
            if inside and process.pid != os.getpid():
                found.append(process)
        except psutil.Error:
            continue
    for process in found:
        with contextlib.suppress(psutil.Error):
            process.terminate()
    _, alive = psutil.wait_procs(found, timeout=timeout_s)
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(alive, timeout=timeout_s)  # gone, its port free, when this returns
    return len(found)


def serve_forever(settings: Settings) -> None:
    stop = threading.Event()
    started = time.perf_counter()
    if log_format() == "json":
        configure_logging(quiet=("ray", "filelock", "urllib3"))
        json_everywhere()  # the handler `import ray.serve` installed on Serve's logger
    # the replicas' lines on this process's stderr, beside its own: one stream for a terminal or a pod
    follower, stop_following = follow_in_thread(replica_logs(settings), sys.stderr)

    def on_signal(*_: Any) -> None:
        if stop.is_set():  # a second Ctrl-C or SIGTERM: stop waiting for a start that does not end
            raise KeyboardInterrupt
        stop.set()

    def handle_signals() -> None:
        # After Ray's start, whose own SIGTERM handler would print a native stack trace and end the
        # process; before the app's start, so that a SIGTERM while replicas start (a pod replaced, the
        # port already answering) still stops Ray and HAProxy and removes HAProxy's folder.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, on_signal)

    try:
        start_serving(settings, after_ray=handle_signals)
        config = settings.serving
        line = (
            f"serving {settings.dataset.model.registered_name}@{config.alias} on http://{config.host}:{config.port}"
            f" (docs: /docs) after {time.perf_counter() - started:.1f} s; Ctrl-C stops"
        )
        if log_format() == "json":
            log.info(line)
        else:
            print(line, flush=True)
        stop.wait()
    finally:
        stop_serving()
        stop_following.set()  # the replicas' last lines too
        follower.join(timeout=5)
