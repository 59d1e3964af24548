"""Serving's Prometheus metrics: one registry per replica holding both its HTTP metrics and its model
metrics, and `/metrics`, which answers for every replica.

A scrape of `http://<serving host>:<port>/metrics` reaches one replica (Serve's proxy picks it); that
replica gathers every replica's registry (a broadcast through the deployment handle) and writes each
series with a `replica` label. Series are not summed here: a replica that restarts resets only its
own counters, which Prometheus' `rate()` handles per series; `sum without (replica) (...)` gives the
deployment's totals.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.metrics_core import Metric

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)


class ServingMetrics:
    """The metrics of one replica."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "fusion_serving_requests", "HTTP requests by route and status", ["route", "code"], registry=r
        )
        self.seconds = Histogram(
            "fusion_serving_request_seconds",
            "time in the replica per request",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.rows = Counter("fusion_serving_rows", "rows predicted", ["input"], registry=r)
        self.hits = Counter("fusion_serving_cache_hits", "rows answered from the prediction cache", registry=r)
        self.misses = Counter("fusion_serving_cache_misses", "rows computed by the model", registry=r)
        self.defaults = Counter(
            "fusion_serving_online_feature_defaults",
            "rows whose group had no online state (defaults used)",
            ["part"],
            registry=r,
        )
        self.loads = Counter("fusion_serving_model_loads", "model versions loaded", ["outcome"], registry=r)
        self.batch_rows = Histogram(
            "fusion_serving_batch_rows",
            "rows per model call",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 512, 2048),
            registry=r,
        )
        self.version = Gauge("fusion_serving_model_version", "registry version this replica serves", registry=r)
        self.redis_failures = Gauge("fusion_serving_redis_failures", "Redis calls that failed or timed out", registry=r)
        self.breaker_open = Gauge(
            "fusion_serving_breaker_open", "1 while the Redis circuit is open or half open, else 0", registry=r
        )
        self.redis_skipped = Gauge(
            "fusion_serving_redis_skipped", "Redis calls skipped by the open circuit", registry=r
        )

    def families(self) -> list[Metric]:
        return list(self.registry.collect())


def replicas_exposition(snapshots: Sequence[tuple[str, Sequence[Metric]]]) -> tuple[bytes, str]:
    """Prometheus text of several replicas' metric families, one family per name, each sample labelled
    with the replica it came from."""
    merged: dict[str, Metric] = {}
    for replica, families in snapshots:
        for family in families:
            target = merged.setdefault(family.name, Metric(family.name, family.documentation, family.type, family.unit))
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    continue  # per-process creation times mean nothing across replicas
                target.add_sample(sample.name, {**sample.labels, "replica": replica}, sample.value)

    class Merged:
        def collect(self) -> Iterator[Metric]:
            yield from merged.values()

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Merged())  # type: ignore[arg-type]
    return generate_latest(registry), CONTENT_TYPE_PLAIN_0_0_4
