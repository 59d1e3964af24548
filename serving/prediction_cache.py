"""The prediction cache in Redis: one entry per input row of one model's content."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

from serving.guarded_redis import GuardedRedis


def row_digest(row: dict[str, Any]) -> str:
    """Canonical hash of one input row: sorted keys, no whitespace, NaN/None as null."""
    canonical = json.dumps(row, sort_keys=True, separators=(",", ":"), default=str, allow_nan=True)
    return hashlib.blake2b(canonical.encode(), digest_size=16).hexdigest()


class PredictionCache:
    """Cached probabilities per input row: key = model name + the model's content id + kind of row + row hash.

    The content id (MLflow's model id, else the run id) is unique across registries; a registry version
    number is not (every registry starts at 1, and one Redis may serve several registries or outlive one)."""

    def __init__(self, redis: GuardedRedis | None, model_name: str, ttl_s: int) -> None:
        self.redis = redis
        self.model_name = model_name
        self.ttl_s = ttl_s

    def keys(self, content_id: str, kind: str, rows: Sequence[dict[str, Any]]) -> list[str]:
        return [f"fusion:pred:{self.model_name}:{content_id}:{kind}:{row_digest(r)}" for r in rows]

    def get(self, keys: list[str]) -> list[float | None]:
        found = self.redis.mget(keys) if self.redis is not None else None
        if found is None:
            return [None] * len(keys)
        return [float(v) if v is not None else None for v in found]

    def put(self, items: dict[str, float]) -> None:
        if self.redis is not None and items:
            self.redis.set_many({k: repr(v) for k, v in items.items()}, self.ttl_s)
