"""Recorded clips the door plays to its visitor (quick replies), decoded once and kept.

PyAV (FFmpeg) decodes whatever the installer recorded (WAV, FLAC, Ogg, MP3...) and resamples it
to the speaker's 16-bit mono at 48 kHz, so playing one is a copy into the speaker's tone slot.
"""

from __future__ import annotations

import av
import numpy as np

from .audio import RATE, packed_s16

#: Longer clips are cut: a quick reply is a sentence, not a message.
MAX_CLIP_S = 20.0


class ClipError(Exception):
    """A clip that cannot be played; the message says why, for the resident and the log."""


def load_clip(path: str) -> np.ndarray:
    try:
        with av.open(path) as container:
            if not container.streams.audio:
                raise ClipError(f"{path} has no audio")
            resampler = av.AudioResampler(format="s16", layout="mono", rate=RATE)
            chunks: list[np.ndarray] = []
            for frame in container.decode(audio=0):
                for out in resampler.resample(frame):
                    chunks.append(np.frombuffer(packed_s16(out), dtype=np.int16))
            for out in resampler.resample(None):
                chunks.append(np.frombuffer(packed_s16(out), dtype=np.int16))
    except (OSError, av.FFmpegError) as exc:
        raise ClipError(f"{path} cannot be decoded: {exc}") from None
    samples = np.concatenate(chunks) if chunks else np.zeros(0, np.int16)
    if not len(samples):
        raise ClipError(f"{path} holds no sound")
    return samples[: int(MAX_CLIP_S * RATE)]


class Clips:
    """Each reply's samples, decoded on first use (a bad file is refused then, and again)."""

    def __init__(self) -> None:
        self._decoded: dict[str, np.ndarray] = {}

    def get(self, path: str) -> np.ndarray:
        if path not in self._decoded:
            self._decoded[path] = load_clip(path)
        return self._decoded[path]

    def forget(self) -> None:
        """After a reload, files may have changed."""
        self._decoded.clear()
