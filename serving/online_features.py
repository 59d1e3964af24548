"""Where serving reads the online feature state the pipeline materialized (tasks/online_store.py):
Redis when configured, else the lake snapshot held in memory."""

from __future__ import annotations

import json
import time
from typing import Any, Protocol

from fusion.core.lake import Lake
from fusion.core.settings import DatasetConfig
from serving.guarded_redis import GuardedRedis
from tasks.online_store import namespace, read_snapshot, stored_items


class OnlineFeatures(Protocol):
    def batch_id(self) -> str | None: ...
    def fetch(self, asks: list[tuple[str, str]]) -> list[list[Any] | None]: ...


class RedisOnlineFeatures:
    """Online feature state in Redis (written by the pipeline, tasks/online_store.py)."""

    MANIFEST_TTL_S = 2.0  # re-read `current` at most this often, so a new batch is picked up quickly

    def __init__(self, redis: GuardedRedis, dataset: str, spec_version: int) -> None:
        self.redis = redis
        self.ns = namespace(dataset, spec_version)
        self._manifest: dict[str, Any] | None = None
        self._read_at = -1e9

    def manifest(self) -> dict[str, Any] | None:
        now = time.monotonic()
        if now - self._read_at > self.MANIFEST_TTL_S:
            raw = self.redis.get(f"{self.ns}:current")
            if raw is not None:
                self._manifest = json.loads(raw)
            self._read_at = now
        return self._manifest

    def batch_id(self) -> str | None:
        manifest = self.manifest()
        return None if manifest is None else str(manifest["batch_id"])

    def fetch(self, asks: list[tuple[str, str]]) -> list[list[Any] | None]:
        batch = self.batch_id()
        if batch is None:
            return [None] * len(asks)
        found = self.redis.mget([f"{self.ns}:{batch}:{part}:{key}" for part, key in asks])
        if found is None:
            return [None] * len(asks)
        return [json.loads(v) if v is not None else None for v in found]


class MemoryOnlineFeatures:
    """Online feature state read once from the lake snapshot (no Redis configured)."""

    def __init__(self, items: dict[tuple[str, str], list[Any]], batch: str | None) -> None:
        self.items = items
        self.batch = batch

    def batch_id(self) -> str | None:
        return self.batch

    def fetch(self, asks: list[tuple[str, str]]) -> list[list[Any] | None]:
        return [self.items.get(ask) for ask in asks]


def memory_online_features(lake_uri: str, dataset: DatasetConfig) -> MemoryOnlineFeatures:
    """The lake snapshot of the online state, for serving without Redis."""
    snapshot = read_snapshot(Lake(lake_uri), dataset.name, dataset.features.version)
    if snapshot is None:
        return MemoryOnlineFeatures({}, None)
    manifest, frames = snapshot
    items = {(part, key): values for part, key, values in stored_items(dataset.features, frames)}
    return MemoryOnlineFeatures(items, str(manifest["batch_id"]))
