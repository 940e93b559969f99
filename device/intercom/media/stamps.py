"""Capture times drawn into the test pattern's pictures and read back from decoded frames, so
glass-to-glass latency is measured on one machine, whose monotonic clock both sides share."""

from __future__ import annotations

import time

import av
import numpy as np

#: The capture-time strip: 40 bits of CLOCK_MONOTONIC in 100 µs units (3.4 years of uptime)
#: and an 8-bit check, as black and white cells big enough to survive H.264 and VP8 at a
#: low bitrate: 24 cells a row, 2 rows.
_STAMP_BITS, _STAMP_COLS = 48, 24


def monotonic_us() -> int:
    return time.monotonic_ns() // 1000


def _stamp_cells(width: int, height: int) -> tuple[int, int]:
    return width // _STAMP_COLS, max(8, height // 30)


def _check_byte(value: int) -> int:
    return (sum(value.to_bytes(5, "big")) * 31 + 7) & 0xFF


def draw_stamp(luma: np.ndarray, stamp_us: int) -> None:
    value = (stamp_us // 100) & ((1 << 40) - 1)
    word = (value << 8) | _check_byte(value)
    cw, ch = _stamp_cells(luma.shape[1], luma.shape[0])
    for i in range(_STAMP_BITS):
        bit = (word >> (_STAMP_BITS - 1 - i)) & 1
        row, col = divmod(i, _STAMP_COLS)
        luma[row * ch:(row + 1) * ch, col * cw:(col + 1) * cw] = 235 if bit else 16


def read_stamp(frame: av.VideoFrame) -> int | None:
    """The capture time (monotonic µs, to 100 µs) a test-pattern frame carries, or None when
    the frame has no readable stamp (another camera, or a picture damaged in transit)."""
    plane = frame.planes[0]
    luma = np.frombuffer(memoryview(plane), np.uint8).reshape(-1, plane.line_size)[:frame.height, :frame.width]
    cw, ch = _stamp_cells(frame.width, frame.height)
    if cw < 4:
        return None
    word = 0
    for i in range(_STAMP_BITS):
        row, col = divmod(i, _STAMP_COLS)
        cell = luma[row * ch + ch // 4:(row + 1) * ch - ch // 4, col * cw + cw // 4:(col + 1) * cw - cw // 4]
        level = float(cell.mean())
        if 60 < level < 190:
            return None  # neither black nor white: not a stamp
        word = (word << 1) | (level >= 128)
    value = word >> 8
    if word & 0xFF != _check_byte(value):
        return None
    return value * 100
