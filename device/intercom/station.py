"""The door station: a press places a video call; the call's life drives LEDs, tones and media.

Everything that changes the call (a press, a server event, a media state change, a timer)
goes through one inbox handled by one worker, in order. That removes the races between, say,
the server's `ringing` arriving while the dial's own reply is still being read, or an `ended`
crossing an `accepted`: each is handled after the previous one is complete.

The camera, speaker and pins live as long as the daemon; a call only borrows them.

The door keeps its own clocks and never trusts the server to remember; the rules are the
shared core's `ClientCall` (its ring deadline, the ring that gives up when the link is gone,
the call the server no longer lists), and this class arms the one timer the call asks for
and carries out what it decides. A dial whose reply comes too late is ended. A call that was
answered survives the loss of the signaling link while its media flows.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription

from intercom_protocol.calls import LINK_GRACE_S, CallState, ClientCall, iso
from intercom_protocol.messages import EndReason, ErrorCode, ProtocolError

from .config import DoorConfig
from .directory import site_users, unknown_residents
from .media.audio import AlsaCaptureTrack, Speaker, ToneTrack
from .media.camera import EncodedCamera, make_camera
from .media.echo import EchoCanceller
from .media.peer import rtc_configuration
from .pins import Pins
from .signaling import NotConnected, RequestFailed, SignalingClient

log = logging.getLogger("intercom.station")

#: Presses kept while the server is unreachable, to report once it is back (oldest dropped).
MAX_MISSED = 20

TRANSIENT = (RequestFailed, NotConnected, asyncio.TimeoutError)


@dataclass
class MissedPress:
    pressed_at: float  # wall clock: the resident wants to know when someone was at the door
    snapshot: bytes | None


class Station:
    def __init__(self, config: DoorConfig, pin_factory: Any = None) -> None:
        self.config = config
        self.loop = asyncio.get_running_loop()
        self.client = SignalingClient(config.server_url, config.user_id, config.access_token, config.device_id,
                                      on_event=self._server_event, on_request=self._server_request,
                                      on_connection=self._connection_changed, claims=self._claims,
                                      ca_file=config.ca_file)
        self.camera: EncodedCamera = make_camera(config.camera)
        mic = config.microphone
        self.echo: EchoCanceller | None = None
        if mic["backend"] == "alsa" and (mic["echo_cancellation"] or mic["noise_suppression"]):
            self.echo = EchoCanceller(mic["echo_cancellation"], mic["noise_suppression"])
        self.speaker = Speaker(config.speaker_device, self.echo, config.tone_volume)
        self.pins = Pins(config.pins, self.press, self.loop, factory=pin_factory)
        self.call: ClientCall | None = None
        self.pc: RTCPeerConnection | None = None
        self.group = 0
        self.last_call: dict[str, Any] | None = None
        self.calls_placed = 0
        self.calls_answered = 0
        self.ignored_presses = 0
        self.missed: deque[MissedPress] = deque(maxlen=MAX_MISSED)
        self.missed_reported = 0
        self.door_openings: list[dict[str, Any]] = []
        self.last_error: str | None = None
        self.reloads = 0
        self._call_timers: list[asyncio.TimerHandle] = []
        #: The live call's own clock (`ClientCall.deadline`): at most one armed at a time.
        self._clock: asyncio.TimerHandle | None = None
        self._snapshot_task: asyncio.Task[None] | None = None
        self._pressed_mono = 0.0
        self._pressed_at = 0.0
        #: Ring-group names the server has no resident for (checked at sign-in and reload).
        self.unknown_residents: list[str] = []
        self._background: set[asyncio.Task[None]] = set()
        #: How long the last press took to become a dial, and its picture to follow (ms).
        self.press_timings: dict[str, float] = {}
        self._inbox: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._signaling: asyncio.Task[None] | None = None
        self._worker: asyncio.Task[None] | None = None
        self.pins.show("offline")

    # -- life ------------------------------------------------------------------------------

    async def start(self) -> None:
        self.camera.start()
        self.speaker.start()
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
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        await self.client.close()
        self._signaling.cancel()
        await asyncio.gather(self._signaling, return_exceptions=True)
        self.camera.close()
        self.speaker.close()
        self.pins.close()

    def reload(self, config: DoorConfig) -> list[str]:
        """Take a new configuration (SIGHUP). The call policy, ring groups and tone volume
        apply from the next event; a new token or server URL from the next connection (at
        once when no call is live). Hardware changes need a restart: they are named."""
        old = self.config
        needs_restart = [name for name in ("pins", "camera", "microphone", "speaker_device", "control_socket")
                         if getattr(old, name) != getattr(config, name)]
        self.config = config
        self.reloads += 1
        if self.last_error and self.last_error.startswith("reload refused"):
            self.last_error = None
        self.speaker.tone_volume = config.tone_volume
        server = (config.server_url, config.user_id, config.access_token, config.device_id)
        if server != (old.server_url, old.user_id, old.access_token, old.device_id):
            self.client.reconfigure(*server)
            if self.call is None or not self.call.live:
                self.client.reconnect()
        elif self.client.connected.is_set():
            self._spawn_check()
        log.info("configuration reloaded from %s%s", config.source,
                 f"; restart to apply {', '.join(needs_restart)}" if needs_restart else "")
        return needs_restart

    # -- inputs (all on the loop thread) -----------------------------------------------------

    def press(self) -> None:
        self._inbox.put_nowait(("press", (time.time(), time.monotonic())))

    def hang_up(self) -> dict[str, Any]:
        """End the current call from the door (the installer's `intercom ctl hangup`)."""
        live = self.call is not None and self.call.live
        if live:
            self._inbox.put_nowait(("hangup", None))
        return {"hanging_up": live}

    def _server_event(self, event: dict[str, Any]) -> None:
        self._inbox.put_nowait(("event", event))

    def _claims(self) -> list[str]:
        """The call this process holds, told to the server at every sign-in."""
        return self.call.claims() if self.call is not None else []

    def _arm_clock(self, call: ClientCall) -> None:
        """One timer at the call's next deadline; it posts to the inbox like every event."""
        if self._clock is not None:
            self._clock.cancel()
            self._clock = None
        deadline = call.deadline()
        if deadline is not None and call is self.call:
            self._clock = self.loop.call_later(max(0.0, deadline - time.monotonic()),
                                               lambda: self._inbox.put_nowait(("clock", call)))

    async def _on_clock(self, call: ClientCall) -> None:
        if call is not self.call:
            return
        reason = call.expire(time.monotonic())
        if reason is None:
            self._arm_clock(call)
            return
        if reason == EndReason.NO_ANSWER:
            log.warning("call %s: no answer and no word from the server by the door's own deadline: giving up",
                        call.call_id)
        else:
            log.warning("server gone for %.0fs while ringing: nobody can answer; giving up", LINK_GRACE_S)
        await self._teardown(reason)
        if call.call_id and self.client.connected.is_set():
            self._spawn_end(call.call_id)
        await self._unanswered(reason)

    def _connection_changed(self, up: bool) -> None:
        self._show()
        if up:
            self._inbox.put_nowait(("resync", self.client.live_calls))
            self._inbox.put_nowait(("report_missed", None))
            self._spawn_check()
        elif self.call is not None and self.call.live:
            self.call.link_lost(time.monotonic())
            self._arm_clock(self.call)

    def _spawn_check(self) -> None:
        task = self.loop.create_task(self._check_ring_groups(), name="check-ring-groups")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _check_ring_groups(self) -> None:
        """Name the ring-group residents the server does not know, in the log and the status."""
        try:
            users = await site_users(self.config.server_url, self.config.access_token, self.client.ssl_context)
        except Exception as exc:  # noqa: BLE001 - a check that could not run changes nothing
            log.info("could not check the ring groups against the server's users: %s", exc)
            return
        unknown = unknown_residents((g.residents for g in self.config.ring_groups), users)
        if unknown != self.unknown_residents and unknown:
            log.warning("the ring groups name %s, not residents of this site on the server: they will not ring",
                        ", ".join(unknown))
        self.unknown_residents = unknown

    async def _work(self) -> None:
        handlers: dict[str, Callable[[Any], Awaitable[None]]] = {"press": self._on_press, "event": self._on_event, "media": self._on_media,
                    "clock": self._on_clock, "hangup": self._on_hangup, "timer": self._on_timer,
                    "report_missed": self._report_missed, "resync": self._on_resync}
        while True:
            kind, data = await self._inbox.get()
            if kind == "stop":
                await self._on_stop()
                return
            try:
                await handlers[kind](data)
            except Exception as exc:  # the door must keep answering presses
                log.exception("while handling %s", kind)
                self.last_error = f"{kind}: {exc}"
            self._show()

    # -- the bell ----------------------------------------------------------------------------

    async def _on_press(self, pressed: tuple[float, float]) -> None:
        pressed_at = pressed[0]
        call = self.call
        if call is not None and call.live and call.role == "caller":
            self.ignored_presses += 1
            log.info("bell pressed during a call (%s): ignored", call.state)
            return
        self._pressed_at, self._pressed_mono = pressed
        if call is not None and call.live:
            # A resident looking outside must not stop a visitor from ringing: the view ends
            # and every resident is rung, the one who was looking included.
            log.info("bell pressed while %s looks outside: ending the view and ringing the residents",
                     (call.peer or {}).get("user_id"))
            await self._tell_server_end(call)
            await self._teardown(EndReason.COMPLETED)
        self.speaker.tone("chime")  # the visitor hears the press worked, server or not
        if not self.client.connected.is_set():
            self.missed.append(MissedPress(pressed_at, await self.camera.snapshot_jpeg()))
            self.last_error = "bell pressed while the server is unreachable; will report it when back"
            log.warning("%s", self.last_error)
            return
        log.info("bell pressed: calling %s", ", ".join(self.config.ring_groups[0].residents))
        await self._dial(0)

    async def _report_missed(self, _: None) -> None:
        """Tell the server about presses it could not hear, oldest first, once each."""
        callees = sorted({r for group in self.config.ring_groups for r in group.residents})
        while self.missed and self.client.connected.is_set():
            press = self.missed[0]
            body: dict[str, Any] = {"callees": callees, "pressed_at": iso(press.pressed_at)}
            if press.snapshot:
                body["snapshot"] = base64.b64encode(press.snapshot).decode()
            try:
                reply = await self.client.request("missed", **body)
            except RequestFailed as exc:
                if exc.code == ErrorCode.INTERNAL:  # the server could not store it: try again later
                    log.warning("the server could not store the press from %s: %s; keeping it",
                                body["pressed_at"], exc)
                    return
                log.error("the server refused a missed press from %s: %s; dropping it", body["pressed_at"], exc)
            except (TimeoutError, NotConnected):
                return  # reported at the next connection
            else:
                self.missed_reported += 1
                log.info("reported the press at %s while offline as %s", body["pressed_at"], reply.get("call_id"))
            self.missed.popleft()

    # -- calling residents -------------------------------------------------------------------

    def _new_peer(self) -> RTCPeerConnection:
        """A peer connection with the door's two transceivers, made before any description so
        that the H.264-only preference holds whether the door offers or answers.

        The camera's H.264 goes out as is (unless the installer chose per-call encoding), and
        the resident's keyframe requests reach its encoder; the microphone goes out and the resident's voice comes back."""
        pc = RTCPeerConnection(rtc_configuration(self.client.ice_servers))
        pc.on("track", self._remote_track)
        pc.on("connectionstatechange", lambda: self._inbox.put_nowait(("media", (pc, pc.connectionState))))
        self.camera.add_to(pc)
        pc.addTransceiver(self._microphone(), direction="sendrecv")
        return pc

    async def _dial(self, group: int) -> None:
        """Dial at once; the visitor's picture follows in its own message.

        The picture is the camera's next keyframe, up to a frame interval away (67 ms at
        15 fps), while the candidates take about 2 ms: waiting for it made the picture, not the
        network, decide how fast the phones rang."""
        ring = self.config.ring_groups[group]
        self.group = group
        # The call's own ring deadline: a server that dies or freezes while it rings never
        # says `no_answer`, and the visitor must not hear the ringback for ever.
        call = self.call = ClientCall.dial(time.monotonic(), ring.timeout_s)
        self._arm_clock(call)
        self._show()
        pc = self.pc = self._new_peer()
        snapshot = self.loop.create_task(self.camera.snapshot_jpeg(), name="snapshot")
        await self._gather(pc)
        body: dict[str, Any] = {"callees": list(ring.residents), "video": True, "ring_timeout_s": ring.timeout_s,
                                "offer": {"type": "offer", "sdp": pc.localDescription.sdp}}
        sent = time.monotonic()
        try:
            reply = await self.client.request("dial", undo=self._undo_dial, **body)
        except (TRANSIENT + (RequestFailed,)) as exc:
            failed = f"dial failed: {exc or 'no answer from the server in time'}"
            log.error("%s", failed)
            if group == 0 and not isinstance(exc, RequestFailed):
                # The server did not hear the press: keep it, to report once it is back.
                picture = await self._picture_within(snapshot, 1.0)
                self.missed.append(MissedPress(self._pressed_at, picture))
                failed += "; the press is kept and will be reported when the server is back"
            else:
                snapshot.cancel()
            self.last_error = failed
            await self._teardown(EndReason.DIAL_FAILED)
            self.speaker.tone("no_answer")
            return
        call.dialed(reply["call_id"])
        if reply.get("unknown"):
            self.last_error = (f"the server has no resident {', '.join(map(str, reply['unknown']))} for this door: "
                               f"check calls.ring_groups")
            log.warning("%s; the others ring", self.last_error)
        self.calls_placed += 1
        if group == 0:  # an escalation's dial comes a ring timeout after the press: not a press timing
            self.press_timings = {"press_to_dial_ms": round((sent - self._pressed_mono) * 1000, 1),
                                  "dial_reply_ms": round((time.monotonic() - sent) * 1000, 1)}
        log.info("call %s placed", call.call_id)
        self._snapshot_task = self.loop.create_task(self._send_snapshot(call, snapshot), name="send-snapshot")

    async def _undo_dial(self, reply: dict[str, Any]) -> None:
        """The dial's `ok` came after the door gave up on it: end that call, or the residents
        would be rung for a visitor the door no longer serves."""
        call_id = str(reply.get("call_id"))
        log.warning("the server placed call %s after the door had given up on it: ending it", call_id)
        await self._end_on_server(call_id)
        self._inbox.put_nowait(("report_missed", None))  # the server answers again: tell it of the press

    @staticmethod
    async def _picture_within(picture: asyncio.Task[bytes | None], timeout: float) -> bytes | None:
        try:
            return await asyncio.wait_for(picture, timeout)
        except Exception:  # noqa: BLE001 - a missed press is kept with or without its picture
            return None

    async def _send_snapshot(self, call: ClientCall, picture: asyncio.Task[bytes | None]) -> None:
        jpeg = await picture
        if self.group == 0:
            self.press_timings["press_to_snapshot_ms"] = round((time.monotonic() - self._pressed_mono) * 1000, 1)
        if not jpeg or not call.live:
            return
        try:
            await self.client.request("snapshot", call_id=call.call_id,
                                      snapshot=base64.b64encode(jpeg).decode())
        except TRANSIENT as exc:  # the call ended meanwhile, or the server went: the ring goes on
            log.info("the visitor's picture did not reach call %s: %s", call.call_id, exc)

    @staticmethod
    async def _gather(pc: RTCPeerConnection) -> None:
        await pc.setLocalDescription(await pc.createOffer())  # gathers candidates: no trickle

    def _microphone(self) -> MediaStreamTrack:
        mic = self.config.microphone
        return ToneTrack() if mic["backend"] == "tone" else AlsaCaptureTrack(mic["device"], self.echo)

    def _remote_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio":
            self.speaker.play(track)

    # -- residents calling the door ----------------------------------------------------------

    def _may_look_outside(self, caller: dict[str, Any]) -> bool:
        allowed = self.config.auto_answer
        if allowed is None:  # the server routes only its own site's residents to this door
            return caller.get("kind") == "resident"
        return caller.get("user_id") in allowed

    async def _on_incoming(self, event: dict[str, Any]) -> None:
        call_id, caller = event["call_id"], event.get("caller") or {}
        busy = self.call is not None and self.call.live
        if busy or not self._may_look_outside(caller):
            log.info("declining call %s from %s: %s", call_id, caller.get("user_id"),
                     "the door is in a call" if busy else "not on the auto-answer list")
            await self._decline(call_id)
            return
        self.call = ClientCall.incoming(call_id, caller)
        pc = self.pc = self._new_peer()
        try:
            await pc.setRemoteDescription(RTCSessionDescription(**event["offer"]))
            await pc.setLocalDescription(await pc.createAnswer())
            await self.client.request("accept", call_id=call_id, answer={"type": "answer", "sdp": pc.localDescription.sdp})
        except Exception as exc:  # noqa: BLE001 - e.g. an offer without H.264: the call ends, the door goes on
            log.warning("could not answer call %s: %s", call_id, exc)
            await self._teardown(EndReason.DECLINED)
            await self._decline(call_id)
            return
        self.call.accepted()  # the peer stays the resident who called
        self.calls_answered += 1
        if self.config.announce:
            self.speaker.tone("announce")
        log.info("%s is looking outside (call %s)", caller.get("user_id"), call_id)
        self._start_call_clock()

    async def _decline(self, call_id: str) -> None:
        try:
            await self.client.request("decline", call_id=call_id)
        except TRANSIENT as exc:
            log.info("could not decline call %s: %s", call_id, exc)

    # -- the call's life ---------------------------------------------------------------------

    async def _on_event(self, event: dict[str, Any]) -> None:
        kind = event["type"]
        if kind == "incoming":
            await self._on_incoming(event)
            return
        call = self.call
        if call is None or not call.live or event.get("call_id") != call.call_id:
            return
        if kind == "ringing":
            call.ringing()
            self.speaker.tone("ringback", loop=True)
            log.info("ringing on %d device(s)", event.get("devices", 0))
        elif kind == "accepted":
            assert self.pc is not None
            self.speaker.stop_tone("ringback")
            await self.pc.setRemoteDescription(RTCSessionDescription(**event["answer"]))
            call.accepted(event.get("by"))
            self._start_call_clock()
            self.last_error = None  # a call got through: an older error no longer describes the door
            log.info("answered by %s", (event.get("by") or {}).get("user_id"))
        elif kind == "ended":
            reason = event.get("reason", EndReason.UNKNOWN)
            log.info("call %s ended: %s", call.call_id, reason)
            await self._teardown(reason)
            if call.unanswered:
                await self._unanswered(reason)

    async def _unanswered(self, reason: str) -> None:
        """The visitor's ring ended with nobody on the line: the next ring group if the group
        simply did not answer, else the "nobody answered" tone (declined, server gone...)."""
        if reason == EndReason.NO_ANSWER and self.group + 1 < len(self.config.ring_groups):
            log.info("no answer: escalating to ring group %d", self.group + 2)
            await self._dial(self.group + 1)
        elif reason != EndReason.CANCELED:
            self.speaker.tone("no_answer")

    def _start_call_clock(self) -> None:
        """The maximum call time counts from the answer; the warning tone comes before it."""
        call = self.call
        assert call is not None
        self._arm_clock(call)  # answered: the ring's clocks stop
        limit, warn = self.config.max_call_s, self.config.warning_before_s
        self._call_timers = [
            self.loop.call_later(limit - warn, lambda: self._inbox.put_nowait(("timer", ("warning", call)))),
            self.loop.call_later(limit, lambda: self._inbox.put_nowait(("timer", ("limit", call)))),
        ]

    async def _on_timer(self, data: tuple[str, ClientCall]) -> None:
        what, call = data
        if call is not self.call or not call.live:
            return
        call_id = call.call_id
        if what == "warning":
            log.info("call %s ends in %.0fs", call_id, self.config.warning_before_s)
            self.speaker.tone("warning")
        else:
            log.info("call %s reached the maximum call time (%.0fs): hanging up", call_id, self.config.max_call_s)
            await self._on_hangup(None)

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
        except TRANSIENT as exc:
            log.warning("could not tell the server call %s ended: %s", call.call_id, exc)
            return False

    @staticmethod
    def _own_end_reason(call: ClientCall) -> EndReason:
        """What the server would record for an end from the door."""
        if call.role == "caller" and call.state in (CallState.DIALING, CallState.RINGING):
            return EndReason.CANCELED
        return EndReason.COMPLETED

    async def _on_resync(self, live: set[str]) -> None:
        """Signed in again: a call the server no longer knows (it restarted, or ended the call
        while the link was down) is over here too, instead of ringing or filming for nobody."""
        call = self.call
        if call is None or not call.live:
            return
        reason = call.signed_in(live)
        self._arm_clock(call)
        if reason is None:
            if call.call_id:
                log.info("call %s goes on after the reconnection", call.call_id)
            return
        log.warning("the server no longer knows call %s: ending it", call.call_id)
        await self._teardown(reason)
        if call.unanswered:
            self.speaker.tone("no_answer")

    async def _end_on_server(self, call_id: str) -> None:
        """`end` for a call the door has already given up on: whatever the answer, it is over here."""
        try:
            await self.client.request("end", call_id=call_id)
        except TRANSIENT + (RequestFailed,) as exc:
            log.info("could not tell the server call %s ended: %s", call_id, exc)

    def _spawn_end(self, call_id: str) -> None:
        """Tell the server a call is over without holding up the door (it may be frozen)."""
        task = self.loop.create_task(self._end_on_server(call_id), name="end")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _teardown(self, reason: str) -> None:
        call = self.call
        if call is not None and call.live:
            call.ended(str(reason))
        if call is not None and call.state is CallState.ENDED:
            self.last_call = {"call_id": call.call_id, "end_reason": call.end_reason,
                              "peer": (call.peer or {}).get("user_id"), "role": call.role}
        for timer in self._call_timers:
            timer.cancel()
        self._call_timers = []
        if self._clock is not None:
            self._clock.cancel()
            self._clock = None
        if self._snapshot_task is not None:
            self._snapshot_task.cancel()
            self._snapshot_task = None
        self.speaker.stop_tone("ringback")
        self.speaker.stop()
        pc, self.pc = self.pc, None
        if pc is not None:
            # aiortc stops a sender's track only when its media had started: without this a
            # call nobody answered would leave its microphone thread holding the sound card,
            # and its view of the camera subscribed, filling up and asking for keyframes.
            for transceiver in pc.getTransceivers():
                if transceiver.sender.track is not None:
                    transceiver.sender.track.stop()
            await pc.close()

    # -- the door action (a request from the server) -----------------------------------------

    async def _server_request(self, req: dict[str, Any]) -> dict[str, Any]:
        if req.get("type") != "action":
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"the door does not handle '{req.get('type')}'")
        if req.get("name") != "open_door":
            raise ProtocolError(ErrorCode.NOT_FOUND, f"the door has no action '{req.get('name')}'")
        return self.open_door(str(req.get("call_id")), req.get("by") or {})

    def open_door(self, call_id: str, by: dict[str, Any]) -> dict[str, Any]:
        """Pulse the strike for a resident the server has checked, in a call this door knows
        (the live one or the last one); log every opening and every refusal."""
        known = {c for c in ((self.call.call_id if self.call else None), (self.last_call or {}).get("call_id")) if c}
        who = by.get("user_id", "?")
        if call_id not in known:
            log.warning("refused to open the door for %s: call %s is not this door's current or last call", who, call_id)
            raise ProtocolError(ErrorCode.FORBIDDEN, "not this door's current or last call")
        if self.pins.relay is None:
            log.warning("asked to open the door for %s, but no relay is configured", who)
            raise ProtocolError(ErrorCode.CONFLICT, "this door has no relay configured (hardware.pins.relay)")
        pulse = self.pins.pulse_relay(on_done=self._show)
        self._show()
        opening = {"at": iso(time.time()), "call_id": call_id, "by": who, "device_id": by.get("device_id"),
                   "pulse_s": pulse}
        self.door_openings.append(opening)
        del self.door_openings[:-20]
        log.info("door opened for %s (call %s), strike energised for %.1fs", who, call_id, pulse)
        return {"pulse_s": pulse}

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
        video = self.camera.video.stats
        return {
            "state": self.state,
            "call": None if call is None or not call.live else {"call_id": call.call_id, "state": str(call.state),
                                                                 "role": call.role, "peer": call.peer},
            "last_call": self.last_call,
            "server": {"url": self.config.server_url, "connected": self.client.connected.is_set(),
                       "user_id": self.config.user_id, "device_id": self.client.device_id,
                       "last_error": self.client.last_error},
            "pins": self.pins.state(),
            "camera": {"backend": self.camera.name, "encoding": self.camera.encoding, "viewers": self.camera.video.viewers,
                       "frames": video.frames, "keyframes": video.keyframes,
                       "keyframe_requests": video.keyframe_requests},
            "speaker": {"device": self.config.speaker_device, "frames": stats.frames, "voice_frames": stats.voice_frames,
                        "dropped": stats.dropped, "tone": self.speaker.playing_tone, "tones_played": stats.tones[-10:],
                        "peak_dbfs": None if stats.peak_dbfs == float("-inf") else round(stats.peak_dbfs, 1)},
            "echo_cancellation": self.echo is not None,
            "config": {"file": self.config.source, "reloads": self.reloads},
            "press_timings": self.press_timings,
            "calls_placed": self.calls_placed,
            "calls_answered": self.calls_answered,
            "ignored_presses": self.ignored_presses,
            "missed_presses": len(self.missed),
            "missed_reported": self.missed_reported,
            "unknown_residents": self.unknown_residents,
            "door_openings": self.door_openings[-5:],
            "last_error": self.last_error,
        }
