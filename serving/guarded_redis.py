"""Redis for serving: a short timeout and a circuit breaker, so a slow or dead Redis costs a request
at most one timeout and then nothing until the cooldown ends; callers answer uncached meanwhile."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from serving.breaker import CircuitBreaker
from tasks.online_store import redis_client


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

    def exists(self, key: str) -> bool | None:
        """None when Redis was skipped or failed: unknown, not absent."""
        found = self._call(lambda: self.client.exists(key))
        return None if found is None else bool(found)

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
