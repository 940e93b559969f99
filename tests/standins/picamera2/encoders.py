"""Stand-in for picamera2.encoders: the parameters the door sets, and force_key_frame()."""

from __future__ import annotations

import threading


class H264Encoder:
    def __init__(self, bitrate: int | None = None, repeat: bool = False, iperiod: int | None = None,
                 framerate: float | None = None, enable_sps_framerate: bool = False, qp: int | None = None,
                 profile: str | None = None) -> None:
        if profile is not None and profile.lower() not in ("baseline", "main", "high"):
            raise RuntimeError(f"Unrecognised profile {profile}")
        self.bitrate, self.repeat, self.iperiod, self.profile = bitrate, repeat, iperiod, profile
        self.forced_key_frames = 0
        self._key = False
        self._lock = threading.Lock()

    def force_key_frame(self) -> None:
        with self._lock:
            self.forced_key_frames += 1
            self._key = True

    def _take_key_request(self) -> bool:
        with self._lock:
            key, self._key = self._key, False
            return key
