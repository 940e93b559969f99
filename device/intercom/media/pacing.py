"""Real-time pacing for generated media, so a simulated camera or microphone delivers frames
at the rate real hardware would, and the call exercises the same timing as on a Pi."""

from __future__ import annotations

import asyncio
import time


class Pacer:
    def __init__(self, rate_hz: float) -> None:
        self.period = 1.0 / rate_hz
        self.index = -1
        self._start: float | None = None

    async def next(self) -> int:
        """Wait until the next frame is due; return its index (0, 1, 2, ...)."""
        now = time.monotonic()
        if self._start is None:
            self._start = now
        self.index += 1
        due = self._start + self.index * self.period
        if due > now:
            await asyncio.sleep(due - now)
        elif now - due > 1.0:
            # Fell far behind (the host was suspended): restart the clock rather than burst.
            self._start = now - self.index * self.period
        return self.index


class RealTime:
    """The same clock for a thread at the hardware edge (an ALSA reader or writer, a camera's
    encoder loop): `tick()` after each frame sleeps until the next one is due. Devices such as
    ALSA's `null` return at once; a sound card blocks by itself and this never sleeps."""

    def __init__(self, period_s: float) -> None:
        self.period = period_s
        self._start = time.monotonic()
        self._count = 0

    def tick(self) -> None:
        self._count += 1
        ahead = self._start + self._count * self.period - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)
        elif ahead < -1.0:
            self._start, self._count = time.monotonic(), 0  # the host was suspended: do not burst
