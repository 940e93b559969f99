"""Limits that keep the server standing against floods, guessing and runaway clients.

Sans-I/O like the call machine: every check takes `now`, so the rules are tested exactly,
without sleeps. The hub asks these objects before it does any work for a message.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass


@dataclass
class LimitSettings:
    #: Messages a connection may send per second on average, and in one burst.
    messages_per_s: float = 20.0
    message_burst: int = 60
    #: Failed `authenticate` attempts allowed per user id, and per address, within the window.
    auth_failures_per_user: int = 10
    auth_failures_per_address: int = 30
    auth_window_s: float = 60.0
    #: Devices one user may have signed in at once (a phone, a tablet, a laptop...).
    connections_per_user: int = 10
    #: Frames waiting to be written to one client; a client that reads slower than this is cut.
    send_queue: int = 512


class TokenBucket:
    """`rate` tokens a second up to `burst`; each message takes one."""

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.stamp = now

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False

    def retry_after(self) -> float:
        return max(0.0, (1 - self.tokens) / self.rate)


class FailureWindow:
    """At most `limit` failures per key in a sliding window of `window_s` seconds.

    Used for authentication: a key that has failed `limit` times is refused until its oldest
    failure leaves the window, even with the right token, so guessing gains nothing by speed.
    """

    def __init__(self, limit: int, window_s: float, max_keys: int = 100_000) -> None:
        self.limit = limit
        self.window_s = window_s
        self.max_keys = max_keys
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, key: str, now: float) -> deque[float] | None:
        times = self._failures.get(key)
        if times is None:
            return None
        while times and times[0] <= now - self.window_s:
            times.popleft()
        if not times:
            del self._failures[key]
            return None
        return times

    def blocked_for(self, key: str, now: float) -> float:
        """Seconds until `key` may try again; 0 when it may try now."""
        times = self._recent(key, now)
        if times is None or len(times) < self.limit:
            return 0.0
        return times[0] + self.window_s - now

    def fail(self, key: str, now: float) -> None:
        times = self._recent(key, now)
        if times is None:
            if len(self._failures) >= self.max_keys:
                self._prune(now)
            times = self._failures[key] = deque(maxlen=self.limit)
        times.append(now)

    def _prune(self, now: float) -> None:
        """Forget stale keys; if all are fresh, forget the oldest half (memory stays bounded)."""
        for key in list(self._failures):
            self._recent(key, now)
        if len(self._failures) >= self.max_keys:
            for key in list(self._failures)[: self.max_keys // 2]:
                del self._failures[key]
