"""Every place the door reaches into aiortc's internals, in one module.

Each hook changes one sender or receiver instance (never aiortc's classes or module functions,
so other connections in the process keep aiortc's own behaviour), names the private attribute
it relies on, and leaves things as aiortc made them when that attribute is not what it
expects, so an aiortc upgrade makes the door slower, not broken. The tests that would notice a
hook no longer working: `test_media.py` (audio levels, the speaker), `test_camera.py`
(keyframe requests), `test_calls.py` (voice both ways). `docs/performance.md` says why each
exists and what was offered upstream.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

from aiortc import RTCRtpCodecParameters, RTCRtpReceiver, RTCRtpSender
from aiortc.jitterbuffer import JitterFrame
from aiortc.rtcrtpsender import RTCEncodedFrame

log = logging.getLogger("intercom.aiortc_hooks")


def forward_keyframe_requests(sender: RTCRtpSender, on_request: Callable[[], None]) -> None:
    """Send the receiver's PLI/FIR to the camera's encoder.

    aiortc routes them to `RTCRtpSender._send_keyframe`, which sets a flag only its own
    encoder reads; with pre-encoded packets nobody reads it. Wrapping that one method on this
    sender instance keeps aiortc's behaviour and adds ours.
    """
    original = sender._send_keyframe

    def send_keyframe() -> None:
        original()
        on_request()

    sender._send_keyframe = send_keyframe  # type: ignore[method-assign]


def send_audio_levels(sender: RTCRtpSender, level_of: Callable[[Any], int | None]) -> None:
    """Put each packet's audio level in its RTP header (RFC 6464), as aiortc does for raw frames.

    aiortc computes the level only for frames it encodes, in a Python loop over every sample
    (`aiortc.rtp.compute_audio_level_dbov`, 0.31 ms a frame here). For pre-encoded packets it
    has none: this wraps `_next_encoded_frame` on this sender instance to give it the level
    `level_of(track)` reports for the packet the track returned last.
    """
    original = sender._next_encoded_frame

    async def next_encoded_frame(codec: RTCRtpCodecParameters) -> RTCEncodedFrame | None:
        encoded = await original(codec)
        if encoded is not None and encoded.audio_level is None:
            encoded.audio_level = level_of(sender.track)
        return encoded

    sender._next_encoded_frame = next_encoded_frame  # type: ignore[method-assign]


#: aiortc's queue from an RTCRtpReceiver to its decoder thread (name-mangled private attributes).
_DECODER_QUEUE = "_RTCRtpReceiver__decoder_queue"
_DECODER_THREAD = "_RTCRtpReceiver__decoder_thread"


class _DecoderQueueStandIn:
    """Takes the place of the `queue.Queue` aiortc's receiver puts encoded frames in.

    `put` is called on the event loop for each frame the jitter buffer releases, and hands it
    on; aiortc's decoder thread, which would `get` them, instead waits here until the receiver
    stops (its `put(None)`), then ends the track as it always does."""

    def __init__(self, deliver: Callable[[RTCRtpCodecParameters, JitterFrame], None]) -> None:
        self._deliver = deliver
        self._stopped = threading.Event()

    def put(self, item: tuple[RTCRtpCodecParameters, JitterFrame] | None) -> None:
        if item is None:
            self._stopped.set()
        else:
            self._deliver(*item)

    def get(self) -> None:
        self._stopped.wait()
        return None


def decode_audio_elsewhere(receiver: RTCRtpReceiver,
                           deliver: Callable[[RTCRtpCodecParameters, JitterFrame], None]) -> bool:
    """Have a received audio stream's encoded frames handed to `deliver` (on the loop) instead
    of aiortc's decoder thread; call between the `track` event and the media starting.

    aiortc decodes each received frame on a thread of its own and posts every decoded frame
    back to the event loop as a new task, which the speaker then takes off the loop again to
    its writer thread: two thread hand-overs and two wake-ups of the loop per 20 ms, which cost
    more than the decoding itself. The speaker's writer thread wakes every 20 ms anyway, so it
    decodes there. False (and nothing changed) when aiortc is not as this expects: the caller
    then plays the track as aiortc delivers it.
    """
    current = getattr(receiver, _DECODER_QUEUE, None)
    if not isinstance(current, queue.Queue) or getattr(receiver, _DECODER_THREAD, "missing") is not None \
            or not current.empty():
        log.warning("aiortc's receiver is not as expected: the speaker takes its decoded audio instead")
        return False
    setattr(receiver, _DECODER_QUEUE, _DecoderQueueStandIn(deliver))
    return True
