"""/metrics across replicas: each replica keeps its own Prometheus registry; the ingress gathers
their samples (a broadcast to the model replicas) and sums them per name and labels. Gauges that
must not be summed carry a `replica` label."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.metrics_core import Metric


def merged_exposition(snapshots: list[list[Any]]) -> tuple[bytes, str]:
    """Prometheus text of several replicas' metric families, samples summed by (name, labels)."""
    families: dict[str, tuple[Metric, dict[tuple[str, tuple[tuple[str, str], ...]], float]]] = {}
    for snapshot in snapshots:
        for family in snapshot:
            if family.name.endswith("_created"):
                continue
            _, sums = families.setdefault(
                family.name, (Metric(family.name, family.documentation, family.type, family.unit), {})
            )
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    continue
                key = (sample.name, tuple(sorted(sample.labels.items())))
                sums[key] = sums.get(key, 0.0) + sample.value

    class Merged:
        def collect(self) -> Any:
            for target, sums in families.values():
                for (name, labels), value in sums.items():
                    target.add_sample(name, dict(labels), value)
                yield target

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Merged())  # type: ignore[arg-type]
    return generate_latest(registry), CONTENT_TYPE_PLAIN_0_0_4
