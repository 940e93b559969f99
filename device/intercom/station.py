"""The door station: a press places a video call; the call's life drives LEDs and media.

Everything that changes the call (a press, a server event, a media state change) goes
through one inbox handled by one worker, in order. That removes the races between, say, the
server's `ringing` arriving while the dial's own reply is still being read, or an `ended`
crossing an `accepted`: each is handled after the previous one is complete.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from typing import Any

from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription

from .config import DoorConfig
from .core.calls import CallState, ClientCall
from .core.messages import EndReason
from .media.peer import rtc_configuration
from .media.audio import AlsaCaptureTrack, AlsaSpeaker, ToneTrack
from .media.video import Camera, TestPatternCamera
from .pins import Pins
from .signaling import NotConnected, RequestFailed, SignalingClient

log = logging.getLogger("intercom.station")

#: How long a call may outlive a lost server connection before the door gives it up; the
#: server's own grace period (10 s by default) decides first.
LOST_SERVER_GRACE_S = 15.0


class Station:
    def __init__(self, config: DoorConfig, pin_factory: Any = None) -> None:
        self.config = config
        self.loop = asyncio.get_running_loop()
        self.client = SignalingClient(config.server_url, config.user_id, config.access_token, config.device_id,
                                      on_event=self._server_event, on_connection=self._connection_changed)
        self.camera: Camera = TestPatternCamera(config.camera["width"], config.camera["height"], config.camera["fps"])
        self.speaker = AlsaSpeaker(config.speaker_device)
        self.pins = Pins(config.pins, self.press, self.loop, factory=pin_factory)
        self.call: ClientCall | None = None
        self.pc: RTCPeerConnection | None = None
        self.group = 0
        self.last_call: dict[str, Any] | None = None
        self.calls_placed = 0
        self.ignored_presses = 0
        self.missed_presses = 0
        self.last_error: str | None = None
        self._inbox: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._signaling: asyncio.Task[None] | None = None
        self._worker: asyncio.Task[None] | None = None
        self.pins.show("offline")

    # -- life ------------------------------------------------------------------------------

    async def start(self) -> None:
        self._signaling = self.loop.create_task(self.client.run(), name="signaling")
        self._worker = self.loop.create_task(self._work(), name="station")

    async def stop(self) -> None:
        """End a live call cleanly, then release the camera, audio and pins.

        Stopping goes through the worker like every other change to the call, so it never
        cuts a teardown short: an aiortc peer connection closed halfway keeps its decoder
        thread alive, and then the process cannot exit."""
        assert self._worker is not None and self._signaling is not None, "stop() before start()"
        self._inbox.put_nowait(("stop", None))
        await self._worker
        await self.client.close()
        self._signaling.cancel()
        await asyncio.gather(self._signaling, return_exceptions=True)
        self.camera.close()
        self.pins.close()

    # -- inputs (all on the loop thread) -----------------------------------------------------

    def press(self) -> None:
        self._inbox.put_nowait(("press", time.monotonic()))

    def hang_up(self) -> dict[str, Any]:
        """End the current call from the door (the installer's `intercom ctl hangup`)."""
        live = self.call is not None and self.call.live
        if live:
            self._inbox.put_nowait(("hangup", None))
        return {"hanging_up": live}

    def _server_event(self, event: dict[str, Any]) -> None:
        self._inbox.put_nowait(("event", event))

    def _connection_changed(self, up: bool) -> None:
        self._show()
        if not up and self.call is not None and self.call.live:
            call_id = self.call.call_id
            self.loop.call_later(LOST_SERVER_GRACE_S, lambda: self._inbox.put_nowait(("server_lost", call_id)))

    async def _work(self) -> None:
        handlers = {"press": self._on_press, "event": self._on_event, "media": self._on_media,
                    "server_lost": self._on_server_lost, "hangup": self._on_hangup}
        while True:
            kind, data = await self._inbox.get()
            if kind == "stop":
                await self._on_stop()
                return
            try:
                await handlers[kind](data)
            except Exception as exc:  # noqa: BLE001 - the door must keep answering presses
                log.exception("while handling %s", kind)
                self.last_error = f"{kind}: {exc}"
            self._show()

    # -- calls -------------------------------------------------------------------------------

    async def _on_press(self, pressed_at: float) -> None:
        if self.call is not None and self.call.live:
            self.ignored_presses += 1
            log.info("bell pressed during a call (%s): ignored", self.call.state)
            return
        if not self.client.connected.is_set():
            self.missed_presses += 1
            self.last_error = "bell pressed while the server is unreachable"
            log.warning("%s", self.last_error)
            return
        log.info("bell pressed: calling %s", ", ".join(self.config.ring_groups[0].residents))
        await self._dial(0)

    async def _dial(self, group: int) -> None:
        ring = self.config.ring_groups[group]
        self.group = group
        self.call = ClientCall(role="caller")
        self._show()
        snapshot = self.camera.snapshot_jpeg()
        pc = self.pc = RTCPeerConnection(rtc_configuration(self.client.ice_servers))
        pc.addTransceiver(self.camera.track(), direction="sendonly")
        pc.addTransceiver(self._microphone(), direction="sendrecv")
        pc.on("track", self._remote_track)
        pc.on("connectionstatechange", lambda: self._inbox.put_nowait(("media", (pc, pc.connectionState))))
        await pc.setLocalDescription(await pc.createOffer())  # gathers candidates: no trickle
        body: dict[str, Any] = {"callees": list(ring.residents), "video": True, "ring_timeout_s": ring.timeout_s,
                                "offer": {"type": "offer", "sdp": pc.localDescription.sdp}}
        if snapshot:
            body["snapshot"] = base64.b64encode(snapshot).decode()
        try:
            reply = await self.client.request("dial", **body)
        except (RequestFailed, NotConnected, asyncio.TimeoutError) as exc:
            self.last_error = f"dial failed: {exc}"
            log.error("%s", self.last_error)
            await self._teardown(EndReason.DIAL_FAILED)
            return
        self.call.dialed(reply["call_id"])
        self.calls_placed += 1
        log.info("call %s placed", self.call.call_id)

    def _microphone(self) -> MediaStreamTrack:
        mic = self.config.microphone
        return ToneTrack() if mic["backend"] == "tone" else AlsaCaptureTrack(mic["device"])

    def _remote_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio":
            self.speaker.play(track)

    async def _on_event(self, event: dict[str, Any]) -> None:
        kind = event["type"]
        if kind == "incoming":
            # Answering residents who look outside arrives with the door policy; until then a
            # resident's call is declined at once rather than left ringing.
            try:
                await self.client.request("decline", call_id=event["call_id"])
            except (RequestFailed, NotConnected, asyncio.TimeoutError) as exc:
                log.info("could not decline call %s: %s", event["call_id"], exc)
            return
        call = self.call
        if call is None or not call.live or event.get("call_id") != call.call_id:
            return
        if kind == "ringing":
            call.ringing()
            log.info("ringing on %d device(s)", event.get("devices", 0))
        elif kind == "accepted":
            assert self.pc is not None
            await self.pc.setRemoteDescription(RTCSessionDescription(**event["answer"]))
            call.accepted(event.get("by"))
            log.info("answered by %s", (event.get("by") or {}).get("user_id"))
        elif kind == "ended":
            reason = event.get("reason", EndReason.UNKNOWN)
            log.info("call %s ended: %s", call.call_id, reason)
            await self._teardown(reason)
            if reason == EndReason.NO_ANSWER and self.group + 1 < len(self.config.ring_groups):
                log.info("no answer: escalating to ring group %d", self.group + 2)
                await self._dial(self.group + 1)

    async def _on_media(self, data: tuple[RTCPeerConnection, str]) -> None:
        pc, state = data
        if pc is not self.pc or self.call is None:
            return
        if state == "connected" and self.call.state is CallState.CONNECTING:
            self.call.media_connected()
            log.info("media connected")
        elif state == "failed" and self.call.live:
            log.warning("media connection failed: ending the call")
            await self._tell_server_end(self.call)
            await self._teardown(EndReason.CONNECTION_LOST)

    async def _on_stop(self) -> None:
        if self.call is not None and self.call.live:
            await self._tell_server_end(self.call)
            await self._teardown(self._own_end_reason(self.call))

    async def _on_hangup(self, _: None) -> None:
        call = self.call
        if call is None or not call.live:
            return
        if not await self._tell_server_end(call):  # when told, the server's `ended` tears down
            await self._teardown(self._own_end_reason(call))

    async def _tell_server_end(self, call: ClientCall) -> bool:
        if not call.call_id or not self.client.connected.is_set():
            return False
        try:
            await self.client.request("end", call_id=call.call_id)
            return True
        except (RequestFailed, NotConnected, asyncio.TimeoutError) as exc:
            log.warning("could not tell the server call %s ended: %s", call.call_id, exc)
            return False

    @staticmethod
    def _own_end_reason(call: ClientCall) -> EndReason:
        """What the server would record for an end from the door, the caller."""
        return EndReason.CANCELED if call.state in (CallState.DIALING, CallState.RINGING) else EndReason.COMPLETED

    async def _on_server_lost(self, call_id: str | None) -> None:
        if self.call is not None and self.call.live and self.call.call_id == call_id and not self.client.connected.is_set():
            log.warning("server gone for %.0fs during the call: giving it up", LOST_SERVER_GRACE_S)
            await self._teardown(EndReason.CONNECTION_LOST)

    async def _teardown(self, reason: str) -> None:
        call = self.call
        if call is not None and call.live:
            call.ended(str(reason))
        if call is not None and call.state is CallState.ENDED:
            self.last_call = {"call_id": call.call_id, "end_reason": call.end_reason,
                              "answered_by": (call.peer or {}).get("user_id")}
        self.speaker.stop()
        pc, self.pc = self.pc, None
        if pc is not None:
            await pc.close()

    # -- what the installer sees ---------------------------------------------------------------

    @property
    def state(self) -> str:
        if self.call is None or not self.call.live:
            return "idle"
        return "calling" if self.call.state in (CallState.DIALING, CallState.RINGING) else "connected"

    def _show(self) -> None:
        state = self.state
        if state == "idle" and not self.client.connected.is_set():
            state = "offline"
        self.pins.show(state)

    def status(self) -> dict[str, Any]:
        call = self.call
        stats = self.speaker.stats
        return {
            "state": self.state,
            "call": None if call is None or not call.live else {"call_id": call.call_id, "state": str(call.state),
                                                                 "peer": call.peer},
            "last_call": self.last_call,
            "server": {"url": self.config.server_url, "connected": self.client.connected.is_set(),
                       "user_id": self.config.user_id, "device_id": self.client.device_id,
                       "last_error": self.client.last_error},
            "pins": self.pins.state(),
            "speaker": {"device": self.config.speaker_device, "frames": stats.frames, "dropped": stats.dropped,
                        "peak_dbfs": None if stats.peak_dbfs == float("-inf") else round(stats.peak_dbfs, 1)},
            "calls_placed": self.calls_placed,
            "ignored_presses": self.ignored_presses,
            "missed_presses": self.missed_presses,
            "last_error": self.last_error,
        }
