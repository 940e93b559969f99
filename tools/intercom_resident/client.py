"""A resident's device in Python (aiortc): answers the door and records what it received.

Used by `make demo`, the end-to-end tests and the benchmarks. It proves a call worked from
the resident's side: video frames decoded and changing, the door's audio not silent. It
reports what happened as JSON lines on stdout, so a test can wait on each step.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import aiohttp
import av
import numpy as np
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from intercom.directory import http_base
from intercom.media.audio import ToneTrack, level_dbfs, packed_s16
from intercom.media.peer import rtc_configuration
from intercom.media.stamps import monotonic_us, read_stamp
from intercom.media.video import encode_image
from intercom.media.voice import send_audio_levels
from intercom.signaling import NotConnected, RequestFailed, SignalingClient
from intercom_protocol import resident as rules
from intercom_protocol.calls import ArmClock, ClientCall
from intercom_protocol.resident import ResidentPolicy, ResidentRules

from .adapter import PolicyCarrier

log = logging.getLogger("intercom.resident")


@dataclass
class Policy:
    """What the resident does when the door rings (the rules), and what this program does
    with what it received."""

    answer: Literal["auto", "decline", "ignore"] = "auto"
    answer_delay_s: float = 0.0
    hangup_after_frames: int | None = 60
    hangup_after_s: float | None = None
    picture: Path | None = None  # where the last frame of each call is saved
    once: bool = False  # stop after the first call
    open_door: bool = False  # press "open" once the visitor is on screen
    look_outside: str | None = None  # call this door once signed in, as a resident checking the street

    @property
    def rules(self) -> ResidentRules:
        return ResidentRules(self.answer, self.answer_delay_s, self.hangup_after_frames, self.hangup_after_s,
                             self.open_door, self.look_outside)


@dataclass
class Reception:
    """What one call delivered to this resident."""

    video_frames: int = 0
    distinct_frames: int = 0
    width: int = 0
    height: int = 0
    audio_frames: int = 0
    audio_peak_dbfs: float = float("-inf")
    first_frame_after_accept_s: float | None = None
    #: Capture to decode, per frame, for pictures that carry their capture time (the door's
    #: test pattern): glass to glass on one machine, whose monotonic clock both sides share.
    glass_to_glass_ms: list[float] = field(default_factory=list)
    #: The longest wait between two video frames: the media did not stop if this stays small
    #: (a cluster's rolling restart moves the signaling, never the media).
    longest_gap_s: float = 0.0
    _last_fingerprint: bytes = b""
    _last_frame_at: float | None = None
    last_frame: Any = None

    def add_video(self, frame: av.VideoFrame) -> None:
        now = time.monotonic()
        if self._last_frame_at is not None:
            self.longest_gap_s = max(self.longest_gap_s, now - self._last_frame_at)
        self._last_frame_at = now
        self.video_frames += 1
        self.width, self.height = frame.width, frame.height
        luma = np.frombuffer(memoryview(frame.planes[0]), dtype=np.uint8)
        fingerprint = hashlib.blake2b(luma[::101].tobytes(), digest_size=8).digest()
        if fingerprint != self._last_fingerprint:
            self.distinct_frames += 1
            self._last_fingerprint = fingerprint
        self.last_frame = frame
        stamp = read_stamp(frame)
        if stamp is not None:
            self.glass_to_glass_ms.append(round((monotonic_us() - stamp) / 1000, 2))

    def add_audio(self, frame: av.AudioFrame) -> None:
        self.audio_frames += 1
        samples = np.frombuffer(packed_s16(frame), np.int16)
        self.audio_peak_dbfs = max(self.audio_peak_dbfs, level_dbfs(samples))

    def as_json(self) -> dict[str, Any]:
        return {
            "video_frames": self.video_frames, "distinct_frames": self.distinct_frames,
            "width": self.width, "height": self.height, "audio_frames": self.audio_frames,
            "audio_peak_dbfs": None if self.audio_peak_dbfs == float("-inf") else round(self.audio_peak_dbfs, 1),
            "first_frame_after_accept_s": self.first_frame_after_accept_s,
            # Counted to the end, so that frames that stopped for good count as one long gap.
            "longest_gap_s": round(max(self.longest_gap_s, time.monotonic() - self._last_frame_at)
                                   if self._last_frame_at is not None else 0.0, 3),
            "glass_to_glass_ms": self.glass_to_glass_ms,
        }


Reporter = Callable[[str, dict[str, Any]], None]


class Resident(PolicyCarrier):
    """The resident policy's adapter: aiortc media, the server connection, timers, reports."""

    def __init__(self, client_args: dict[str, Any], policy: Policy, report: Reporter) -> None:
        super().__init__()
        self.policy = policy
        self.calls = ResidentPolicy(policy.rules)
        self.report = report
        self.client = SignalingClient(**client_args, on_event=self._event, on_connection=self._connection,
                                      claims=self.calls.claims)
        self._token: str = client_args["access_token"]
        self.pc: RTCPeerConnection | None = None
        self.reception = Reception()
        self.done = asyncio.Event()
        self._accepted_at = 0.0
        self._closing: asyncio.Task[None] | None = None

    @property
    def call(self) -> ClientCall | None:
        return self.calls.call

    async def run(self) -> None:
        runner = asyncio.get_running_loop().create_task(self.client.run())
        try:
            await self.done.wait()
        finally:
            await self._close_media()
            await self.client.close()
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)

    # -- inputs --------------------------------------------------------------------------------

    def _connection(self, up: bool) -> None:
        self.report("online" if up else "offline", {"device_id": self.client.device_id})
        super()._connection(up)

    # -- carrying out what the policy decided ----------------------------------------------------

    def _carry_out(self, effect: rules.Effect) -> None:
        match effect:
            case ArmClock(call, deadline):
                self._arm_clock(call, deadline)
            case rules.Rings(call, ring):
                self.reception = Reception()
                self.report("incoming", {"call_id": call.call_id, "caller": ring.caller, "snapshot_url": ring.snapshot_url})
            case rules.FetchPicture(call_id, url):
                self._spawn(self._fetch_snapshot(call_id, url))
            case rules.Decline(call_id, busy):
                self._spawn(self._decline(call_id, report=not busy))
            case rules.AnswerRing(call, offer, delay_s):
                self._spawn(self._answer(call, offer, delay_s))
            case rules.DialDoor(call, door):
                self._spawn(self._look_outside(call, door))
            case rules.UseAnswer(call, answer):
                self._spawn(self._use_answer(answer))
            case rules.Answered(call, by):
                self.report("answered", {"call_id": call.call_id, **({"by": by} if by is not None else {})})
                self._watch_media(call)
            case rules.HangUpAfter(call, delay_s):
                self._spawn(self._hang_up_later(call, delay_s))
            case rules.HangUp(call):
                self._spawn(self._hang_up(call))
            case rules.OpenDoor(call):
                self._spawn(self._open_door(call))
            case rules.MediaConnected(call):
                self.report("media_connected", {"call_id": call.call_id})
            case rules.Ended(call, reason):
                self._closed(call, reason)
            case rules.Missed(press):
                self.report("missed", {"call_id": press.call_id, "caller": press.caller, "pressed_at": press.pressed_at,
                                       "snapshot_url": press.snapshot_url})

    def _new_peer(self) -> RTCPeerConnection:
        pc = self.pc = RTCPeerConnection(rtc_configuration(self.client.ice_servers))
        pc.on("track", self._track)
        pc.on("connectionstatechange", lambda: self._media_state(pc))
        return pc

    async def _look_outside(self, call: ClientCall, door: str) -> None:
        """Call the door: it answers by itself for residents it allows, and shows the street."""
        self.reception = Reception()
        pc = self._new_peer()
        pc.addTransceiver("video", direction="recvonly")
        send_audio_levels(pc.addTransceiver(ToneTrack(freqs=(440.0, 330.0)), direction="sendrecv").sender)
        await pc.setLocalDescription(await pc.createOffer())
        self._accepted_at = time.monotonic()
        try:
            reply = await self.client.request("dial", callees=[door], video=True,
                                              offer={"type": "offer", "sdp": pc.localDescription.sdp})
        except (RequestFailed, NotConnected) as exc:
            self.calls.dial_failed()
            self.report("dial_failed", {"error": str(exc)})
            await self._close_media()
            self.done.set()
            return
        self.report("dialed", {"call_id": reply["call_id"], "door": door})
        self._run(self.calls.dialed(call, reply["call_id"], time.monotonic()))

    async def _fetch_snapshot(self, call_id: str, path: str) -> None:
        """What a ringing phone shows: the visitor's picture, fetched with our own token."""
        base = http_base(self.client.url)
        headers = {"Authorization": f"Bearer {self._token}"}
        try:
            async with aiohttp.ClientSession() as http:
                async with http.get(base + path, headers=headers, timeout=aiohttp.ClientTimeout(total=10)) as resp:
                    body = await resp.read()
                    status, kind = resp.status, resp.content_type
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.report("snapshot_failed", {"call_id": call_id, "error": str(exc)})
            return
        if status != 200:
            self.report("snapshot_failed", {"call_id": call_id, "error": f"HTTP {status}"})
            return
        self.report("snapshot", {"call_id": call_id, "bytes": len(body), "content_type": kind,
                                 "jpeg": body.startswith(b"\xff\xd8\xff")})

    async def _decline(self, call_id: str, report: bool) -> None:
        await self.client.request("decline", call_id=call_id)
        if report:
            self.report("declined", {"call_id": call_id})

    async def _answer(self, call: ClientCall, offer: dict[str, Any], delay_s: float) -> None:
        if delay_s:
            await asyncio.sleep(delay_s)  # the resident takes a moment to pick up (--answer-delay)
        if not call.live:
            return
        pc = self._new_peer()
        await pc.setRemoteDescription(RTCSessionDescription(**offer))
        # The resident's voice, so the door hears something: mono Opus, as a browser sends it.
        send_audio_levels(pc.addTrack(ToneTrack(freqs=(440.0, 330.0))))
        await pc.setLocalDescription(await pc.createAnswer())
        self._accepted_at = time.monotonic()
        try:
            await self.client.request("accept", call_id=call.call_id,
                                      answer={"type": "answer", "sdp": pc.localDescription.sdp})
        except (RequestFailed, NotConnected) as exc:
            self.report("accept_failed", {"call_id": call.call_id, "error": str(exc)})
            await self._close_media()
            return
        self._run(self.calls.answered(call, time.monotonic()))

    def _track(self, track: MediaStreamTrack) -> None:
        self._spawn(self._receive(track))

    async def _receive(self, track: MediaStreamTrack) -> None:
        reception = self.reception
        call = self.call
        try:
            while True:
                frame = await track.recv()
                if isinstance(frame, av.VideoFrame):
                    if reception.video_frames == 0:
                        reception.first_frame_after_accept_s = round(time.monotonic() - self._accepted_at, 4)
                        self.report("first_frame", {"after_accept_s": reception.first_frame_after_accept_s,
                                                    "width": frame.width, "height": frame.height})
                    reception.add_video(frame)
                    self._run(self.calls.video_frame(call, reception.video_frames))
                elif isinstance(frame, av.AudioFrame):
                    reception.add_audio(frame)
        except MediaStreamError:
            return

    async def _open_door(self, call: ClientCall) -> None:
        try:
            reply = await self.client.request("action", call_id=call.call_id, name="open_door")
        except RequestFailed as exc:
            self.report("open_door_refused", {"call_id": call.call_id, "code": exc.code, "message": exc.message})
        except (NotConnected, TimeoutError) as exc:
            self.report("open_door_refused", {"call_id": call.call_id, "code": "unreachable", "message": str(exc)})
        else:
            self.report("door_opened", {"call_id": call.call_id,
                                        **{k: v for k, v in reply.items() if k not in ("type", "re")}})

    async def _hang_up_later(self, call: ClientCall, delay: float) -> None:
        await asyncio.sleep(delay)  # --hangup-after: the length of the call is the point
        self._run(self.calls.hang_up(call))

    async def _hang_up(self, call: ClientCall) -> None:
        self.report("hanging_up", {"call_id": call.call_id})
        try:
            await self.client.request("end", call_id=call.call_id)
        except (RequestFailed, NotConnected) as exc:
            log.warning("could not end the call: %s", exc)

    def _closed(self, call: ClientCall, reason: str) -> None:
        """A call that has just ended: its media goes, and the end is reported once."""
        self._disarm_clock()
        self._stop_media_watch()
        pc, self.pc = self.pc, None
        self._spawn(self._report_end(call, reason, pc, self.reception))

    async def _report_end(self, call: ClientCall, reason: str, pc: RTCPeerConnection | None,
                          reception: Reception) -> None:
        picture = None
        if self.policy.picture is not None and reception.last_frame is not None:
            self.policy.picture.parent.mkdir(parents=True, exist_ok=True)
            self.policy.picture.write_bytes(encode_image(reception.last_frame, "png"))
            picture = str(self.policy.picture)
        if pc is not None:
            self._closing = asyncio.get_running_loop().create_task(pc.close())
            await asyncio.shield(self._closing)
        self.report("ended", {"call_id": call.call_id, "reason": reason, "picture": picture, **reception.as_json()})
        if self.policy.once:
            self.done.set()

    async def _close_media(self) -> None:
        """Close the peer connection, or wait for the close another task began: one cut short
        leaves aiortc's decoder threads running, and the process could not exit."""
        self._stop_media_watch()
        pc, self.pc = self.pc, None
        if pc is not None:
            self._closing = asyncio.get_running_loop().create_task(pc.close())
        if self._closing is not None:
            await asyncio.shield(self._closing)
