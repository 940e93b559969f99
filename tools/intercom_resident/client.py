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
from typing import Any

import aiohttp
import av
import numpy as np
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from intercom.media.audio import ToneTrack, level_dbfs, packed_s16
from intercom.media.camera import monotonic_us, read_stamp
from intercom.media.peer import rtc_configuration
from intercom.media.video import encode_image
from intercom.signaling import NotConnected, RequestFailed, SignalingClient
from intercom_protocol.calls import CallState, ClientCall

log = logging.getLogger("intercom.resident")

#: The server's default ring timeout: a door answers a look outside at once, or declines.
LOOK_OUTSIDE_RING_S = 30.0


@dataclass
class Policy:
    """What the resident does when the door rings."""

    answer: str = "auto"  # auto | decline | ignore
    answer_delay_s: float = 0.0
    hangup_after_frames: int | None = 60
    hangup_after_s: float | None = None
    picture: Path | None = None
    once: bool = False
    open_door: bool = False  # press "open" once the visitor is on screen
    look_outside: str | None = None  # call this door once signed in, as a resident checking the street


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
    _last_fingerprint: bytes = b""
    last_frame: Any = None

    def add_video(self, frame: av.VideoFrame) -> None:
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
            "glass_to_glass_ms": self.glass_to_glass_ms,
        }


Reporter = Callable[[str, dict[str, Any]], None]


class Resident:
    def __init__(self, client_args: dict[str, Any], policy: Policy, report: Reporter) -> None:
        self.policy = policy
        self.report = report
        self.client = SignalingClient(**client_args, on_event=self._event, on_connection=self._connection,
                                      claims=self._claims)
        self._token: str = client_args["access_token"]
        self.call: ClientCall | None = None
        self.pc: RTCPeerConnection | None = None
        self.reception = Reception()
        self.done = asyncio.Event()
        self._accepted_at = 0.0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing: asyncio.Task[None] | None = None
        #: The live call's own clock (`ClientCall.deadline`).
        self._clock: asyncio.TimerHandle | None = None
        #: Events that came while our dial's reply was still on its way to the dialing task.
        self._early: list[dict[str, Any]] = []

    async def run(self) -> None:
        runner = asyncio.get_running_loop().create_task(self.client.run())
        try:
            await self.done.wait()
        finally:
            await self._close_media()
            await self.client.close()
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)

    def _claims(self) -> list[str]:
        return self.call.claims() if self.call is not None else []

    def _connection(self, up: bool) -> None:
        """The call's rules (the shared core's `ClientCall`) decide what a lost or regained
        link means for it; a call the server no longer lists is over here too."""
        self.report("online" if up else "offline", {"device_id": self.client.device_id})
        call = self.call
        if call is not None and call.live:
            if up:
                reason = call.signed_in(self.client.live_calls)
                if reason is not None:
                    self._closed(call, str(reason))
            else:
                call.link_lost(time.monotonic())
            self._arm_clock(call)
        if up and self.policy.look_outside and self.call is None:
            self._spawn(self._look_outside(self.policy.look_outside))

    async def _look_outside(self, door: str) -> None:
        """Call the door: it answers by itself for residents it allows, and shows the street."""
        call = self.call = ClientCall.dial(time.monotonic(), LOOK_OUTSIDE_RING_S)
        self._arm_clock(call)
        self.reception = Reception()
        pc = self.pc = RTCPeerConnection(rtc_configuration(self.client.ice_servers))
        pc.on("track", self._track)
        pc.on("connectionstatechange", lambda: self._media_state(pc))
        pc.addTransceiver("video", direction="recvonly")
        pc.addTransceiver(ToneTrack(freqs=(440.0, 330.0)), direction="sendrecv")
        await pc.setLocalDescription(await pc.createOffer())
        self._accepted_at = time.monotonic()
        try:
            reply = await self.client.request("dial", callees=[door], video=True,
                                              offer={"type": "offer", "sdp": pc.localDescription.sdp})
        except (RequestFailed, NotConnected) as exc:
            self._early = []
            self.report("dial_failed", {"error": str(exc)})
            await self._close_media()
            self.done.set()
            return
        self._dialed(call, reply["call_id"])
        self.report("dialed", {"call_id": call.call_id, "door": door})

    def _dialed(self, call: ClientCall, call_id: str) -> None:
        """The dial's reply named the call: what the server said of it meanwhile applies now."""
        call.dialed(call_id)
        early, self._early = self._early, []
        for event in early:
            if event.get("call_id") == call_id:
                self._event(event)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _event(self, event: dict[str, Any]) -> None:
        kind = event["type"]
        call = self.call
        if kind in ("ringing", "accepted", "ended", "snapshot") and call is not None and call.live \
                and call.call_id is None:
            # Our dial's `ok` and the call's first events (a door declining at once) are read
            # in one go, before the dialing task has taken the call id from the reply: keep
            # them for it instead of dropping them as another call's.
            self._early.append(event)
            return
        if kind == "incoming":
            if self.call is not None and self.call.call_id == event["call_id"]:
                return  # the same ring again, after a reconnection
            if self.call is not None and self.call.live:
                self._spawn(self.client.request("decline", call_id=event["call_id"]))  # busy
                return
            lifetime = event.get("expires_in_s")
            if not isinstance(lifetime, (int, float)) or isinstance(lifetime, bool):
                lifetime = None
            # The ring's own clock: it stops by itself if its `ended` never comes.
            self.call = ClientCall.incoming(event["call_id"], event["caller"], time.monotonic(), lifetime)
            self._arm_clock(self.call)
            self.reception = Reception()
            self.report("incoming", {"call_id": event["call_id"], "caller": event["caller"],
                                     "snapshot_url": event.get("snapshot_url")})
            if event.get("snapshot_url"):
                self._spawn(self._fetch_snapshot(event["call_id"], event["snapshot_url"]))
            self._spawn(self._respond(event))
        elif kind == "snapshot" and self.call is not None and event.get("call_id") == self.call.call_id:
            self._spawn(self._fetch_snapshot(event["call_id"], event["snapshot_url"]))
        elif kind == "accepted" and self.call is not None and event.get("call_id") == self.call.call_id:
            self._spawn(self._door_answered(event))
        elif kind == "ended" and self.call is not None and event.get("call_id") == self.call.call_id:
            self._finish(event.get("reason", "unknown"))
        elif kind == "missed":
            self.report("missed", {k: event.get(k) for k in ("call_id", "caller", "pressed_at", "snapshot_url")})

    def _arm_clock(self, call: ClientCall) -> None:
        if self._clock is not None:
            self._clock.cancel()
            self._clock = None
        deadline = call.deadline()
        if deadline is not None:
            self._clock = asyncio.get_running_loop().call_later(max(0.0, deadline - time.monotonic()),
                                                                self._on_clock, call)

    def _on_clock(self, call: ClientCall) -> None:
        if call is not self.call:
            return
        reason = call.expire(time.monotonic())
        if reason is None:
            self._arm_clock(call)
        else:
            self._closed(call, str(reason))

    async def _door_answered(self, event: dict[str, Any]) -> None:
        call, pc = self.call, self.pc
        if call is None or pc is None or not call.live:
            return
        await pc.setRemoteDescription(RTCSessionDescription(**event["answer"]))
        if call.state is CallState.DIALING:
            # `ringing` follows the dial's `ok` in the same read, before this task has taken the
            # call id from the reply, so it was not matched to the call: it did happen.
            call.ringing()
        call.accepted(event.get("by"))
        self._arm_clock(call)  # answered: the ring's clocks stop
        self.report("answered", {"call_id": call.call_id, "by": event.get("by")})

    async def _fetch_snapshot(self, call_id: str, path: str) -> None:
        """What a ringing phone shows: the visitor's picture, fetched with our own token."""
        base = self.client.url.replace("ws://", "http://", 1).replace("wss://", "https://", 1)
        base = base.split("/v1/ws", 1)[0]
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

    async def _respond(self, event: dict[str, Any]) -> None:
        assert self.call is not None
        call = self.call
        if self.policy.answer == "ignore":
            return
        if self.policy.answer == "decline":
            await self.client.request("decline", call_id=call.call_id)
            self.report("declined", {"call_id": call.call_id})
            return
        if self.policy.answer_delay_s:
            await asyncio.sleep(self.policy.answer_delay_s)
        if not call.live:
            return
        pc = self.pc = RTCPeerConnection(rtc_configuration(self.client.ice_servers))
        pc.on("track", self._track)
        pc.on("connectionstatechange", lambda: self._media_state(pc))
        await pc.setRemoteDescription(RTCSessionDescription(**event["offer"]))
        pc.addTrack(ToneTrack(freqs=(440.0, 330.0)))  # the resident's voice, so the door hears something
        await pc.setLocalDescription(await pc.createAnswer())
        self._accepted_at = time.monotonic()
        try:
            await self.client.request("accept", call_id=call.call_id,
                                      answer={"type": "answer", "sdp": pc.localDescription.sdp})
        except (RequestFailed, NotConnected) as exc:
            self.report("accept_failed", {"call_id": call.call_id, "error": str(exc)})
            await self._close_media()
            return
        if call.live:
            call.accepted()
            self._arm_clock(call)
            self.report("answered", {"call_id": call.call_id})
            if self.policy.hangup_after_s is not None:
                self._spawn(self._hang_up_later(call, self.policy.hangup_after_s))

    def _media_state(self, pc: RTCPeerConnection) -> None:
        if pc is self.pc and self.call is not None and pc.connectionState == "connected" \
                and self.call.state is CallState.CONNECTING:
            self.call.media_connected()
            self.report("media_connected", {"call_id": self.call.call_id})

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
                    if reception.video_frames == 1 and self.policy.open_door and call is not None:
                        self._spawn(self._open_door(call))
                    limit = self.policy.hangup_after_frames
                    if limit is not None and reception.video_frames == limit and call is not None:
                        self._spawn(self._hang_up(call))
                elif isinstance(frame, av.AudioFrame):
                    reception.add_audio(frame)
        except MediaStreamError:
            return

    async def _open_door(self, call: ClientCall) -> None:
        try:
            reply = await self.client.request("action", call_id=call.call_id, name="open_door")
        except RequestFailed as exc:
            self.report("open_door_refused", {"call_id": call.call_id, "code": exc.code, "message": exc.message})
        except (TimeoutError, NotConnected) as exc:
            self.report("open_door_refused", {"call_id": call.call_id, "code": "unreachable", "message": str(exc)})
        else:
            self.report("door_opened", {"call_id": call.call_id, **{k: v for k, v in reply.items() if k not in ("type", "re")}})

    async def _hang_up_later(self, call: ClientCall, delay: float) -> None:
        await asyncio.sleep(delay)
        await self._hang_up(call)

    async def _hang_up(self, call: ClientCall) -> None:
        if call.live and call.call_id:
            self.report("hanging_up", {"call_id": call.call_id})
            try:
                await self.client.request("end", call_id=call.call_id)
            except (RequestFailed, NotConnected) as exc:
                log.warning("could not end the call: %s", exc)

    def _finish(self, reason: str, call: ClientCall | None = None) -> None:
        """The call is over. It is marked so at once, so that a ring read right after the
        `ended` (a door ending a look outside to ring everyone) is not declined as busy; the
        media is closed and the end reported in a task of its own."""
        current = self.call
        if current is None or not current.live or (call is not None and call is not current):
            return
        current.ended(reason)
        self._closed(current, reason)

    def _closed(self, call: ClientCall, reason: str) -> None:
        """A call that has just ended: its media goes, and the end is reported once."""
        if self._clock is not None:
            self._clock.cancel()
            self._clock = None
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
        pc, self.pc = self.pc, None
        if pc is not None:
            self._closing = asyncio.get_running_loop().create_task(pc.close())
        if self._closing is not None:
            await asyncio.shield(self._closing)
