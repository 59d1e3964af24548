"""Where online features live: a snapshot in the lake (always) and Redis (when configured).

Layout, per dataset and feature-spec version (`ns` = fusion:online:<dataset>:v<version>):
  lake   online/<dataset>/v<version>/<batch>/<part>.parquet, and current.json (the manifest, last)
  Redis  <ns>:<batch>:<part>:<group key> -> JSON list of the part's stored values
         <ns>:current -> the manifest; written after every group, so a reader never sees half a batch.
The previous batch's keys expire an hour after the switch (readers that hold the old manifest finish).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import polars as pl

from fusion.core.lake import Lake
from fusion.core.settings import FeatureSpec
from tasks.online import OnlineState, online_parts, state_rows

OLD_BATCH_GRACE_S = 3600
WRITE_CHUNK = 5000


def namespace(dataset: str, spec_version: int) -> str:
    return f"fusion:online:{dataset}:v{spec_version}"


@dataclass(frozen=True)
class Materialized:
    dataset: str
    spec_version: int
    batch_id: str
    as_of: str
    groups: dict[str, int]  # part -> groups with state
    manifest_uri: str
    redis_keys: int  # 0 when Redis is not configured


def snapshot_dir(lake: Lake, dataset: str, spec_version: int) -> str:
    return lake.path("online", dataset, f"v{spec_version}")


def manifest_path(lake: Lake, dataset: str, spec_version: int) -> str:
    return f"{snapshot_dir(lake, dataset, spec_version)}/current.json"


def write_snapshot(lake: Lake, dataset: str, spec: FeatureSpec, batch_id: str, state: OnlineState) -> dict[str, Any]:
    """Parts as Parquet, then the manifest that points at them; returns the manifest."""
    root = snapshot_dir(lake, dataset, spec.version)
    parts = {
        name: lake.write_parquet(frame, f"{root}/{batch_id}/{name}.parquet") for name, frame in state.frames.items()
    }
    manifest = {
        "dataset": dataset,
        "spec_version": spec.version,
        "batch_id": batch_id,
        "as_of": state.as_of.isoformat(),
        "parts": parts,
        "groups": {name: frame.height for name, frame in state.frames.items()},
    }
    lake.write_json(manifest, manifest_path(lake, dataset, spec.version))
    return manifest


def read_snapshot(lake: Lake, dataset: str, spec_version: int) -> tuple[dict[str, Any], dict[str, pl.DataFrame]] | None:
    """The latest materialized state of this dataset and spec version, or None when there is none."""
    try:
        manifest = lake.read_json(manifest_path(lake, dataset, spec_version))
    except FileNotFoundError:
        return None
    return manifest, {name: lake.read_parquet(path) for name, path in manifest["parts"].items()}


def stored_items(spec: FeatureSpec, frames: dict[str, pl.DataFrame]) -> Iterator[tuple[str, str, list[Any]]]:
    """(part, group key, stored values) of every group of every part."""
    for part in online_parts(spec):
        if part.name in frames:
            for key, values in state_rows(part, frames[part.name]):
                yield part.name, key, list(values)


def load_into_redis(client: Any, spec: FeatureSpec, manifest: dict[str, Any], frames: dict[str, pl.DataFrame]) -> int:
    """Write a snapshot's groups, then switch `current` to it; returns the keys written."""
    ns = namespace(manifest["dataset"], manifest["spec_version"])
    batch = manifest["batch_id"]
    written = 0
    pipe = client.pipeline(transaction=False)
    for part, key, values in stored_items(spec, frames):
        pipe.set(f"{ns}:{batch}:{part}:{key}", json.dumps(values))
        written += 1
        if written % WRITE_CHUNK == 0:
            pipe.execute()
    pipe.execute()
    previous = client.get(f"{ns}:current")
    client.set(f"{ns}:current", json.dumps(manifest))
    if previous is not None:
        old = json.loads(previous)["batch_id"]
        if old != batch:
            for stale in client.scan_iter(match=f"{ns}:{old}:*", count=1000):
                client.expire(stale, OLD_BATCH_GRACE_S)
    return written


def redis_client(url: str, timeout_s: float = 5.0) -> Any:
    """A synchronous client with explicit timeouts and no hidden retries (redis-py retries by default)."""
    from redis import Redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return Redis.from_url(
        url,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 0),
        decode_responses=True,
    )
