"""The door station: the door's hardware, media and server connection around its call policy.

The rules (ring groups and escalation, busy, who may look outside, the door's own clocks, the
kept presses, the open-door checks) are the shared protocol's `DoorPolicy`, with no I/O; this
class feeds it what happens and carries out the effects it returns: tones, the peer
connection and its media, requests to the server, timers.

Everything that changes the call (a press, a server event, a media state change, a timer)
goes through one inbox handled by one worker, in order, effects included. That removes the
races between, say, the server's `ringing` arriving while the dial's own reply is still being
read, or an `ended` crossing an `accepted`: each is handled after the previous one is complete.

The camera, speaker and pins live as long as the daemon; a call only borrows them.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any

import av
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription

from intercom_protocol import door as policy
from intercom_protocol.calls import ArmClock, ClientCall
from intercom_protocol.door import DoorPolicy, Effect
from intercom_protocol.messages import ErrorCode, Incoming, ProtocolError, parse_event
from intercom_protocol.requests import RequestFailed

from .config import DoorConfig
from .directory import site_users, unknown_residents
from .kept_presses import KeptPresses
from .media.audio import AlsaCaptureTrack, Speaker, ToneTrack
from .media.camera import EncodedCamera
from .media.cameras import make_camera
from .media.clips import ClipError, Clips
from .media.echo import EchoCanceller
from .media.peer import rtc_configuration, watch_received
from .media.recorder import record
from .media.standby import StandbyPeer
from .media.video import EncodedVideo
from .media.voice import send_audio_levels
from .outbox import Outbox
from .pins import Pins
from .signaling import NotConnected, SignalingClient

if TYPE_CHECKING:
    from .nvr.outputs import NvrOutputs

log = logging.getLogger("intercom.station")

TRANSIENT = (RequestFailed, NotConnected, TimeoutError)


class Station:
    def __init__(self, config: DoorConfig, pin_factory: Any = None) -> None:
        self.config = config
        self.loop = asyncio.get_running_loop()
        self.policy = DoorPolicy(config.rules)
        #: The presses the server did not hear, on disk: a restart or a power cut loses none.
        self.kept = KeptPresses(config.state_dir / "presses")
        self.policy.missed.extend(self.kept.load())
        self.client = SignalingClient(config.server_url, config.user_id, config.access_token, config.device_id,
                                      on_event=self._server_event, on_request=self._server_request,
                                      on_connection=self._connection_changed, claims=self.policy.claims,
                                      ca_file=config.ca_file, quick_replies=self._offered(config))
        self.camera: EncodedCamera = make_camera(config.camera)
        mic = config.microphone
        self.echo: EchoCanceller | None = None
        if mic["backend"] == "alsa" and (mic["echo_cancellation"] or mic["noise_suppression"]):
            self.echo = EchoCanceller(mic["echo_cancellation"], mic["noise_suppression"])
        self.speaker = Speaker(config.speaker_device, self.echo, config.tone_volume)
        self.clips = Clips()
        messages = config.messages
        self.outbox = Outbox(messages.spool_dir, messages.spool_max_bytes, lambda: self.config.server_url,
                             lambda: self.config.access_token, lambda: self.client.ssl_context) if messages else None
        #: The last visitor's message recorded, for the installer's status.
        self.last_message: dict[str, Any] | None = None
        self.pins = Pins(config.pins, self.press, self.loop, factory=pin_factory)
        self.pc: RTCPeerConnection | None = None
        #: The next press's peer connection, made while the door is idle.
        self.standby = StandbyPeer(lambda ice: self._new_peer(ice, with_tracks=False), lambda: self.client.ice_servers)
        self.reloads = 0
        self._call_timers: list[asyncio.TimerHandle] = []
        #: Reports whether the answered call's media still arrives (`watch_received`).
        self._media_watch: asyncio.Task[None] | None = None
        #: The live call's own clock (`ClientCall.deadline`): at most one armed at a time.
        self._clock: asyncio.TimerHandle | None = None
        #: The visitor's picture for the call being placed, taken at the press.
        self._picture: asyncio.Task[bytes | None] | None = None
        self._snapshot_task: asyncio.Task[None] | None = None
        self._pressed_mono = 0.0
        #: Ring-group names the server has no resident for (checked at sign-in and reload).
        self.unknown_residents: list[str] = []
        self._background: set[asyncio.Task[None]] = set()
        #: How long the last press took to become a dial, and its picture to follow (ms).
        self.press_timings: dict[str, float] = {}
        self._inbox: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._signaling: asyncio.Task[None] | None = None
        self._worker: asyncio.Task[None] | None = None
        #: RTSP, ONVIF and snapshots for NVRs, when `rtsp:` is configured (GStreamer loads only then).
        self.nvr: NvrOutputs | None = None
        if config.rtsp is not None:
            from .nvr.outputs import NvrOutputs

            assert isinstance(self.camera.video, EncodedVideo)  # rtsp: requires passthrough (config)
            self.nvr = NvrOutputs(config.rtsp, config.user_id, config.camera, self.camera.video,
                                  self.camera.snapshot_jpeg, self._answered, self.speaker.talk,
                                  lambda: self._microphone(raw=True))
        self.pins.show("offline")

    @property
    def last_error(self) -> str | None:
        return self.policy.last_error

    @last_error.setter
    def last_error(self, value: str | None) -> None:
        self.policy.last_error = value

    # -- life ------------------------------------------------------------------------------

    async def start(self) -> None:
        self.camera.start()
        self.speaker.start()
        if self.nvr is not None:
            await self.nvr.start()
        self.standby.prepare()
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
        await self.standby.close()
        await self.client.close()
        self._signaling.cancel()
        await asyncio.gather(self._signaling, return_exceptions=True)
        if self.nvr is not None:
            await self.nvr.stop()
        self.camera.close()
        self.speaker.close()
        if self.outbox is not None:
            self.outbox.close()
        self.pins.close()

    def reload(self, config: DoorConfig) -> list[str]:
        """Take a new configuration (SIGHUP). The call policy, ring groups and tone volume
        apply from the next event; a new token or server URL from the next connection (at
        once when no call is live). Hardware changes need a restart: they are named."""
        old = self.config
        needs_restart = [name for name in ("pins", "camera", "microphone", "speaker_device", "control_socket",
                                           "state_dir", "rtsp")
                         if getattr(old, name) != getattr(config, name)]
        self.config = config
        self.policy.rules = config.rules
        self.reloads += 1
        if self.last_error and self.last_error.startswith("reload refused"):
            self.last_error = None
        self.speaker.tone_volume = config.tone_volume
        self.client.quick_replies = self._offered(config)
        self.clips.forget()
        server = (config.server_url, config.user_id, config.access_token, config.device_id)
        if server != (old.server_url, old.user_id, old.access_token, old.device_id):
            self.client.reconfigure(*server)
            if not self.policy.live:
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
        live = self.policy.live
        if live:
            self._inbox.put_nowait(("hangup", None))
        return {"hanging_up": live}

    def _server_event(self, event: dict[str, Any]) -> None:
        self._inbox.put_nowait(("event", event))

    def _connection_changed(self, up: bool) -> None:
        if up:
            self.policy.link_up()
            if not self.policy.live:
                self.standby.prepare()  # rebuilt if this sign-in brought other ICE servers
            self._inbox.put_nowait(("resync", self.client.live_calls))
            self._spawn_check()
            if self.outbox is not None:
                self.outbox.send_soon()
        else:
            self._run_now(self.policy.link_lost(time.monotonic()))
        self._show()

    def _run_now(self, effects: list[Effect]) -> None:
        """Effects that need no waiting (the clock), outside the worker."""
        for effect in effects:
            assert isinstance(effect, ArmClock), effect
            self._arm_clock(effect)

    async def _work(self) -> None:
        handlers: dict[str, Callable[[Any], Awaitable[None]]] = {
            "press": self._on_press, "event": self._on_event, "media": self._on_media, "clock": self._on_clock,
            "hangup": self._on_hangup, "timer": self._on_timer, "report_missed": self._report_missed,
            "resync": self._on_resync, "reply_played": self._on_reply_played, "heard": self._on_heard}
        while True:
            kind, data = await self._inbox.get()
            if kind == "stop":
                await self._run(self.policy.stop())
                return
            try:
                await handlers[kind](data)
            except Exception as exc:  # the door must keep answering presses
                log.exception("while handling %s", kind)
                self.last_error = f"{kind}: {exc}"
            self._show()

    async def _on_reply_played(self, _: None) -> None:
        await self._run(self.policy.reply_played())

    async def _on_press(self, pressed: tuple[float, float]) -> None:
        wall, self._pressed_mono = pressed
        await self._run(self.policy.press(self._pressed_mono, wall))

    async def _on_event(self, message: dict[str, Any]) -> None:
        event = parse_event(message)
        if isinstance(event, Incoming):
            await self._run(self.policy.incoming(event))
        elif event is not None:
            await self._run(self.policy.event(event, time.monotonic()))

    async def _on_media(self, data: tuple[RTCPeerConnection, str]) -> None:
        pc, state = data
        if pc is self.pc:
            await self._run(self.policy.media(state, time.monotonic()))

    async def _on_heard(self, call: ClientCall) -> None:
        self.policy.media_heard(call, time.monotonic())

    async def _on_clock(self, call: ClientCall) -> None:
        await self._run(self.policy.clock(call, time.monotonic()))

    async def _on_timer(self, data: tuple[str, ClientCall]) -> None:
        what, call = data
        await self._run(self.policy.call_timer(call, "warning" if what == "warning" else "limit"))

    async def _on_hangup(self, _: None) -> None:
        await self._run(self.policy.hang_up())

    async def _on_resync(self, live: set[str]) -> None:
        await self._run(self.policy.signed_in(live))

    async def _report_missed(self, _: None = None) -> None:
        """Tell the server about presses it could not hear, oldest first, once each."""
        while (body := self.policy.missed_to_report()) is not None:
            pressed_at = self.policy.missed[0].pressed_at
            try:
                reply = await self.client.request("missed", **body)
            except RequestFailed as exc:
                # The server could not store it: try again later; else it never will take it.
                go_on = self.policy.missed_result("not_stored" if exc.code == ErrorCode.INTERNAL else "refused", str(exc))
            except (NotConnected, TimeoutError):
                go_on = self.policy.missed_result("unreachable")
            else:
                call_id = str(reply.get("call_id"))
                go_on = self.policy.missed_result("reported", call_id)
                if self.outbox is not None:
                    self.outbox.name_message(policy.offline_message(pressed_at), call_id)
            self.kept.save(self.policy.missed)
            if not go_on:
                return

    # -- carrying out what the policy decided -------------------------------------------------

    async def _run(self, effects: list[Effect]) -> None:
        for effect in effects:
            await self._carry_out(effect)

    async def _carry_out(self, effect: Effect) -> None:
        match effect:
            case policy.Tone(name, loop):
                self.speaker.tone(name, loop=loop)
            case policy.StopTone(name):
                self.speaker.stop_tone(name)
            case ArmClock():
                self._arm_clock(effect)
            case policy.StartCallTimers(call, warning_in_s, limit_in_s):
                self._call_timers = [
                    self.loop.call_later(warning_in_s, lambda: self._inbox.put_nowait(("timer", ("warning", call)))),
                    self.loop.call_later(limit_in_s, lambda: self._inbox.put_nowait(("timer", ("limit", call)))),
                ]
                if self.pc is not None:  # the answered call's media is watched for silence
                    self._media_watch = self.loop.create_task(
                        watch_received(self.pc, lambda: self._inbox.put_nowait(("heard", call))), name="media-watch")
            case policy.PlaceCall():
                await self._place_call(effect)
            case policy.SendPicture(call):
                picture, self._picture = self._picture, None
                if picture is not None:
                    self._snapshot_task = self.loop.create_task(self._send_snapshot(call, picture), name="send-snapshot")
            case policy.KeepPress(pressed_at):
                picture, self._picture = self._picture, None
                jpeg = await (self._picture_within(picture, 1.0) if picture else self.camera.snapshot_jpeg())
                self.policy.keep_press(pressed_at, jpeg)
                self.kept.save(self.policy.missed)
            case policy.Answer(call, offer):
                await self._answer(call, offer)
            case policy.UseAnswer(answer):
                assert self.pc is not None
                await self.pc.setRemoteDescription(RTCSessionDescription(**answer))
            case policy.Decline(call_id):
                try:
                    await self.client.request("decline", call_id=call_id)
                except TRANSIENT as exc:
                    log.info("could not decline call %s: %s", call_id, exc)
            case policy.TellEnded(call_id, wait, untold):
                if not wait:
                    self._spawn(self._end_on_server(call_id))
                elif not await self._tell_ended(call_id) and untold is not None:
                    await self._run(self.policy.untold(untold))
            case policy.Teardown():
                await self._teardown()
            case policy.ReportMissed():
                self._inbox.put_nowait(("report_missed", None))
            case policy.RecordMessage(name):
                self.policy.recording = True  # from now: a press is ignored, the LED says so
                self._spawn(self._record_message(name))

    def _arm_clock(self, effect: ArmClock) -> None:
        """One timer at the call's next deadline; it posts to the inbox like every event."""
        if self._clock is not None:
            self._clock.cancel()
            self._clock = None
        call = effect.call
        if effect.deadline is not None and call is self.policy.call:
            self._clock = self.loop.call_later(max(0.0, effect.deadline - time.monotonic()),
                                               lambda: self._inbox.put_nowait(("clock", call)))

    # -- calling residents -------------------------------------------------------------------

    def _new_peer(self, ice_servers: list[dict[str, Any]] | None = None, with_tracks: bool = True) -> RTCPeerConnection:
        """A peer connection with the door's two transceivers, made before any description so
        that the H.264-only preference holds whether the door offers or answers.

        The camera's H.264 goes out as is (unless the installer chose per-call encoding), and
        the resident's keyframe requests reach its encoder; the microphone goes out and the
        resident's voice comes back. Without tracks it is the standby's, given them at a press."""
        pc = RTCPeerConnection(rtc_configuration(self.client.ice_servers if ice_servers is None else ice_servers))
        pc.on("track", lambda track: self._remote_track(pc, track))
        pc.on("connectionstatechange", lambda: self._inbox.put_nowait(("media", (pc, pc.connectionState))))
        self.camera.add_to(pc, with_track=with_tracks)
        microphone = pc.addTransceiver(self._microphone() if with_tracks else "audio", direction="sendrecv")
        send_audio_levels(microphone.sender)
        return pc

    def _give_tracks(self, pc: RTCPeerConnection) -> None:
        """The prepared connection's camera and microphone, given at the press."""
        video, audio = pc.getTransceivers()
        video.sender.replaceTrack(self.camera.track())
        audio.sender.replaceTrack(self._microphone())

    async def _place_call(self, place: policy.PlaceCall) -> None:
        """Dial at once, on the connection prepared while idle; the visitor's picture follows in
        its own message.

        The picture is the camera's next keyframe, up to a frame interval away (67 ms at
        15 fps), while the candidates take about 2 ms: waiting for it made the picture, not the
        network, decide how fast the phones rang."""
        pc = self.standby.take()
        prepared = pc is not None
        if pc is None:  # nothing prepared (or stale): build one now, the slow way
            pc = self._new_peer()
            await pc.setLocalDescription(await pc.createOffer())  # gathers candidates: no trickle
        self.pc = pc
        self._picture = self.loop.create_task(self.camera.snapshot_jpeg(), name="snapshot")
        body: dict[str, Any] = {"callees": list(place.callees), "video": True, "ring_timeout_s": place.ring_timeout_s,
                                "offer": {"type": "offer", "sdp": pc.localDescription.sdp}}
        sent = time.monotonic()
        try:
            reply = await self.client.request("dial", undo=self._undo_dial, **body)
        except TRANSIENT as exc:
            self._show()
            await self._run(self.policy.dial_failed(place.call, place.group, str(exc),
                                                    server_heard=isinstance(exc, RequestFailed)))
            return
        # The LED and the tracks once the dial is out: gpiozero starts a blink thread, and
        # media flows only after a resident answers; neither may delay the phones' ring.
        self._show()
        if prepared:
            self._give_tracks(pc)
        if place.group == 0:  # an escalation's dial comes a ring timeout after the press: not a press timing
            self.press_timings = {"press_to_dial_ms": round((sent - self._pressed_mono) * 1000, 1),
                                  "dial_reply_ms": round((time.monotonic() - sent) * 1000, 1),
                                  "prepared": prepared}
        await self._run(self.policy.dialed(place.call, reply["call_id"], list(reply.get("unknown") or [])))

    async def _undo_dial(self, reply: dict[str, Any]) -> None:
        await self._run(self.policy.late_dial(str(reply.get("call_id"))))

    @staticmethod
    async def _picture_within(picture: asyncio.Task[bytes | None], timeout: float) -> bytes | None:
        try:
            return await asyncio.wait_for(picture, timeout)
        except Exception:  # noqa: BLE001 - a missed press is kept with or without its picture
            return None

    async def _send_snapshot(self, call: ClientCall, picture: asyncio.Task[bytes | None]) -> None:
        jpeg = await picture
        if self.policy.group == 0:
            self.press_timings["press_to_snapshot_ms"] = round((time.monotonic() - self._pressed_mono) * 1000, 1)
        if not jpeg or not call.live:
            return
        try:
            await self.client.request("snapshot", call_id=call.call_id, snapshot=base64.b64encode(jpeg).decode())
        except TRANSIENT as exc:  # the call ended meanwhile, or the server went: the ring goes on
            log.info("the visitor's picture did not reach call %s: %s", call.call_id, exc)

    def _microphone(self, raw: bool = False) -> MediaStreamTrack:
        """The microphone for a call (Opus packets) or, `raw`, for a visitor's message (samples)."""
        mic = self.config.microphone
        return ToneTrack(raw=raw) if mic["backend"] == "tone" else AlsaCaptureTrack(mic["device"], self.echo, raw=raw)

    def _remote_track(self, pc: RTCPeerConnection, track: MediaStreamTrack) -> None:
        if track.kind != "audio":
            return
        receiver = next((t.receiver for t in pc.getTransceivers() if t.receiver.track is track), None)
        if receiver is None:
            self.speaker.play(track)
        else:
            self.speaker.receive(receiver, track)

    # -- residents calling the door ----------------------------------------------------------

    async def _answer(self, call: ClientCall, offer: dict[str, Any]) -> None:
        pc = self.pc = self._new_peer()
        try:
            await pc.setRemoteDescription(RTCSessionDescription(**offer))
            await pc.setLocalDescription(await pc.createAnswer())
            await self.client.request("accept", call_id=call.call_id,
                                      answer={"type": "answer", "sdp": pc.localDescription.sdp})
        except Exception as exc:  # noqa: BLE001 - e.g. an offer without H.264: the call ends, the door goes on
            await self._run(self.policy.answer_failed(call, str(exc)))
            return
        await self._run(self.policy.answered(call, time.monotonic()))

    # -- ending --------------------------------------------------------------------------------

    async def _tell_ended(self, call_id: str) -> bool:
        """`end`, waited for; whether the server was told."""
        if not self.client.connected.is_set():
            return False
        try:
            await self.client.request("end", call_id=call_id)
            return True
        except TRANSIENT as exc:
            log.warning("could not tell the server call %s ended: %s", call_id, exc)
            return False

    async def _end_on_server(self, call_id: str) -> None:
        """`end` for a call the door has already given up on: whatever the answer, it is over here."""
        try:
            await self.client.request("end", call_id=call_id)
        except TRANSIENT as exc:
            log.info("could not tell the server call %s ended: %s", call_id, exc)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Work that must not hold up the door (a frozen server, a check)."""
        task = self.loop.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _teardown(self) -> None:
        for timer in self._call_timers:
            timer.cancel()
        self._call_timers = []
        if self._media_watch is not None:
            self._media_watch.cancel()
            self._media_watch = None
        if self._clock is not None:
            self._clock.cancel()
            self._clock = None
        for task in (self._snapshot_task, self._picture):
            if task is not None:
                task.cancel()
        self._snapshot_task = self._picture = None
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
        self.standby.prepare()  # for the next press

    # -- the door action (a request from the server) -----------------------------------------

    async def _server_request(self, req: dict[str, Any]) -> dict[str, Any]:
        if req.get("type") != "action":
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"the door does not handle '{req.get('type')}'")
        if req.get("name") == "quick_reply":
            return self.quick_reply(str(req.get("call_id")), str(req.get("reply")), req.get("by") or {})
        if req.get("name") != "open_door":
            raise ProtocolError(ErrorCode.NOT_FOUND, f"the door has no action '{req.get('name')}'")
        return self.open_door(str(req.get("call_id")), req.get("by") or {})

    @staticmethod
    def _offered(config: DoorConfig) -> list[dict[str, str]] | None:
        return [{"id": r.id, "label": r.label} for r in config.quick_replies] or None

    def quick_reply(self, call_id: str, reply_id: str, by: dict[str, Any]) -> dict[str, Any]:
        """Play a quick reply to the visitor, if the ring is still on and its clip plays; the
        ringback comes back after it unless the reply ended the ring."""
        reply = self.policy.quick_reply(call_id, reply_id, by)
        try:
            samples = self.clips.get(reply.clip)
        except ClipError as exc:
            log.warning("quick reply '%s': %s", reply.id, exc)
            raise ProtocolError(ErrorCode.CONFLICT, f"the door cannot play '{reply.label}': {exc}") from None
        self.speaker.clip(f"reply:{reply.id}", samples, done=lambda: self._inbox.put_nowait(("reply_played", None)))
        return {"ends_call": reply.ends_call}

    def open_door(self, call_id: str, by: dict[str, Any]) -> dict[str, Any]:
        """Pulse the strike, if the policy allows it (raises its refusal otherwise)."""
        self.policy.open_door(call_id, by, relay=self.pins.relay is not None)
        pulse = self.pins.pulse_relay(on_done=self._show)
        self._show()
        self.policy.door_opened(call_id, by, pulse, time.time())
        return {"pulse_s": pulse}

    # -- what the installer sees ---------------------------------------------------------------

    # -- a visitor's message ---------------------------------------------------------------------

    async def _record_message(self, call_id: str) -> None:
        """Tell the visitor nobody can answer (the greeting, or a tone), beep, and record; the
        LED blinks slowly while it records. Then send it to the server."""
        settings, outbox = self.config.messages, self.outbox
        assert settings is not None and outbox is not None
        self._show()
        mic: MediaStreamTrack | None = None
        try:
            if not isinstance(self.camera.video, EncodedVideo):
                raise RuntimeError("visitor messages need the camera's own H.264 (hardware.camera.encoding: "
                                   "passthrough)")
            greeting = self.clips.get(settings.greeting) if settings.greeting else None
            await self._play_to_end(lambda done: self.speaker.clip("greeting", greeting, done=done) if greeting
                                    is not None else self.speaker.tone("no_answer", done=done))
            await self._play_to_end(lambda done: self.speaker.tone("record_beep", done=done))
            camera = self.config.camera
            outbox.make_room(int(settings.max_s * 400_000))  # room for a message at a camera's rate
            mic = self._microphone(raw=True)
            made = await record(self.camera.video, mic, settings.spool_dir / f"{call_id}.mp4", settings.max_s,
                                camera["width"], camera["height"], camera["fps"])
            self.policy.messages_recorded += 1
            self.last_message = {"call_id": call_id, "duration_s": round(made.duration_s, 2), "bytes": made.bytes,
                                 "video_frames": made.video_frames, "video_sha256": made.video_sha256}
            log.info("recorded the visitor's message for call %s: %.1f s, %d bytes", call_id, made.duration_s,
                     made.bytes)
        except (ClipError, OSError, RuntimeError, av.FFmpegError) as exc:
            log.error("could not record the visitor's message: %s", exc)
            self.last_error = f"visitor message: {exc}"
        finally:
            if mic is not None:
                mic.stop()
            self.policy.recording = False
            self._show()
        outbox.send_soon()

    async def _play_to_end(self, play: Callable[[Callable[[], None]], None], limit_s: float = 30.0) -> None:
        done: asyncio.Future[None] = self.loop.create_future()

        def finished() -> None:
            if not done.done():
                done.set_result(None)
        play(finished)
        try:
            await asyncio.wait_for(done, limit_s)
        except TimeoutError:
            self.speaker.stop_tone()

    def _spawn_check(self) -> None:
        self._spawn(self._check_ring_groups())

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

    @property
    def state(self) -> str:
        return self.policy.state

    def _show(self) -> None:
        state = self.state
        if state == "idle" and not self.client.connected.is_set():
            state = "offline"
        self.pins.show(state)

    def status(self) -> dict[str, Any]:
        door = self.policy
        call = door.call
        stats = self.speaker.stats
        video = self.camera.video.stats
        return {
            "state": self.state,
            "call": None if call is None or not call.live else {"call_id": call.call_id, "state": str(call.state),
                                                                 "role": call.role, "peer": call.peer},
            "last_call": door.last_call,
            "server": {"url": self.config.server_url, "connected": self.client.connected.is_set(),
                       "user_id": self.config.user_id, "device_id": self.client.device_id,
                       "last_error": self.client.last_error, "sign_ins": self.client.sign_ins},
            "pins": self.pins.state(),
            "camera": {"backend": self.camera.name, "encoding": self.camera.encoding,
                       "viewers": self.camera.video.viewers, "frames": video.frames, "keyframes": video.keyframes,
                       "keyframe_requests": video.keyframe_requests},
            "speaker": {"device": self.config.speaker_device, "frames": stats.frames,
                        "voice_frames": stats.voice_frames, "talk_frames": stats.talk_frames, "dropped": stats.dropped,
                        "tone": self.speaker.playing_tone, "tones_played": stats.tones[-10:],
                        "peak_dbfs": None if stats.peak_dbfs == float("-inf") else round(stats.peak_dbfs, 1)},
            "echo_cancellation": self.echo is not None,
            "config": {"file": self.config.source, "reloads": self.reloads},
            "press_timings": self.press_timings,
            "standby": {"ready": self.standby.ready, "prepared": self.standby.stats.prepared,
                        "taken": self.standby.stats.taken, "missed": self.standby.stats.missed},
            "calls_placed": door.calls_placed,
            "calls_answered": door.calls_answered,
            "ignored_presses": door.ignored_presses, "last_ignored": door.last_ignored,
            "devices_rung": door.devices_rung, "quick_replies_played": door.replies_played,
            "messages": None if self.outbox is None else {"recording": door.recording,
                                                         "recorded": door.messages_recorded,
                                                         "last": self.last_message, **self.outbox.status()},
            "missed_presses": len(door.missed),
            "kept_presses": {"directory": str(self.kept.directory), "last_error": self.kept.last_error},
            "missed_reported": door.missed_reported,
            "unknown_residents": self.unknown_residents,
            "door_openings": door.door_openings[-5:],
            "rtsp": None if self.nvr is None else self.nvr.status(),
            "last_error": self.last_error,
        }

    def _answered(self) -> bool:
        """Whether a resident's call is answered now; read from GStreamer's threads (one
        attribute, then the call's own state), for the talk rule."""
        call = self.policy.call
        return call is not None and call.answered
