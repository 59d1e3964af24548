"""A circuit breaker for calls to a dependency that may be slow or down (Redis in serving)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


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
