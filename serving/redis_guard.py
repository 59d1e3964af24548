"""Redis for serving: a short timeout and a circuit breaker, so a slow or dead Redis costs a request
at most one timeout and then nothing until the cooldown ends; callers answer uncached meanwhile."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from tasks.online_store import namespace, redis_client


class CircuitBreaker:
    """Closed: calls go through. After `failures` consecutive failures it opens for `cooldown_s`;
    then one call is let through (half open): success closes it, failure opens it again."""

    def __init__(self, failures: int, cooldown_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.failures = failures
        self.cooldown_s = cooldown_s
        self.clock = clock
        self._consecutive = 0
        self._open_until: float | None = None
        self._probing = False
        self._lock = threading.Lock()

    @property
    def state(self) -> str:
        with self._lock:
            if self._open_until is None:
                return "closed"
            return "half_open" if self.clock() >= self._open_until else "open"

    def allow(self) -> bool:
        with self._lock:
            if self._open_until is None:
                return True
            if self.clock() < self._open_until or self._probing:
                return False
            self._probing = True  # the one trial call
            return True

    def success(self) -> None:
        with self._lock:
            self._consecutive, self._open_until, self._probing = 0, None, False

    def failure(self) -> None:
        with self._lock:
            self._consecutive += 1
            if self._probing or self._consecutive >= self.failures:
                self._open_until = self.clock() + self.cooldown_s
            self._probing = False


class GuardedRedis:
    """The few Redis calls serving makes, each bounded by the timeout and behind the breaker.
    A call that is skipped or fails returns None; `failures` counts them for /metrics."""

    def __init__(self, url: str, timeout_s: float, breaker: CircuitBreaker) -> None:
        self.client = redis_client(url, timeout_s)
        self.breaker = breaker
        self.failures = 0
        self.skipped = 0

    def _call(self, fn: Callable[[], Any]) -> Any:
        if not self.breaker.allow():
            self.skipped += 1
            return None
        try:
            result = fn()
        except Exception:  # any Redis error (connection, timeout, OOM, read-only replica): answer uncached
            self.failures += 1
            self.breaker.failure()
            return None
        self.breaker.success()
        return result

    def mget(self, keys: Sequence[str]) -> list[str | None] | None:
        return self._call(lambda: self.client.mget(keys)) if keys else []

    def get(self, key: str) -> str | None:
        return self._call(lambda: self.client.get(key))  # type: ignore[no-any-return]

    def set_many(self, items: dict[str, str], ttl_s: int) -> bool:
        def write() -> bool:
            pipe = self.client.pipeline(transaction=False)
            for key, value in items.items():
                pipe.set(key, value, ex=ttl_s)
            pipe.execute()
            return True

        return bool(items) and self._call(write) is True

    def close(self) -> None:
        self.client.close()


def row_digest(row: dict[str, Any]) -> str:
    """Canonical hash of one input row: sorted keys, no whitespace, NaN/None as null."""
    canonical = json.dumps(row, sort_keys=True, separators=(",", ":"), default=str, allow_nan=True)
    return hashlib.blake2b(canonical.encode(), digest_size=16).hexdigest()


class PredictionCache:
    """Cached probabilities per input row: key = model + version + kind of row + row hash."""

    def __init__(self, redis: GuardedRedis | None, model_name: str, ttl_s: int) -> None:
        self.redis = redis
        self.model_name = model_name
        self.ttl_s = ttl_s

    def keys(self, version: str, kind: str, rows: Sequence[dict[str, Any]]) -> list[str]:
        return [f"fusion:pred:{self.model_name}:{version}:{kind}:{row_digest(r)}" for r in rows]

    def get(self, keys: list[str]) -> list[float | None]:
        found = self.redis.mget(keys) if self.redis is not None else None
        if found is None:
            return [None] * len(keys)
        return [float(v) if v is not None else None for v in found]

    def put(self, items: dict[str, float]) -> None:
        if self.redis is not None and items:
            self.redis.set_many({k: repr(v) for k, v in items.items()}, self.ttl_s)


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
