"""One SIP phone as one device of its resident: it signs in to the server with the resident's
access token under a device id of its own (`sip-<name>`), so the server rings it, lets it win
or lose, cancels it and writes its history and door openings exactly as for the web app.

The resident's rules are the shared `ResidentPolicy` (a ring while busy is declined, a ring
stops by its own clock, a call whose media is gone ends); this module carries out its effects
on a SIP leg instead of a screen: a ring dials the phone, the phone's answer is the resident's
accept (for a phone number, only once its key was pressed), busy and decline are a decline,
the server's `ended` cancels or hangs up the leg, and the open code opens the door.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription

from intercom.directory import http_base
from intercom.media.aiortc_hooks import decode_audio_elsewhere
from intercom.media.peer import rtc_configuration
from intercom.media.voice import send_audio_levels
from intercom.signaling import NotConnected, RequestFailed, SignalingClient
from intercom_protocol import resident as rules
from intercom_protocol.calls import ArmClock, ClientCall
from intercom_protocol.resident import ResidentPolicy, ResidentRules
from intercom_resident.adapter import PolicyCarrier

from .audio import PhoneSound, PhoneTrack, door_open_prompt, door_to_phone, press_key_prompt, refused_prompt
from .engine import BUSY, DECLINED, Engine, Leg, LegEnd, Registration

log = logging.getLogger("intercom.sip.phone")


@dataclass(frozen=True)
class PhoneSettings:
    name: str
    user_id: str  # the resident this phone belongs to
    access_token: str
    target: str  # what is dialed: `**610`, `620`, `sip:desk@pbx`, `+4930...`
    #: A phone number: the call counts as answered only once this key is pressed (a voicemail
    #: never presses it). None for a phone of the house.
    answer_key: str | None = None
    #: SIP identities (`611`, `sip:611@fritz.box`) that may call the door as this phone.
    callers: tuple[str, ...] = ()

    @property
    def device_id(self) -> str:
        return f"sip-{self.name}"


@dataclass(frozen=True)
class GatewaySettings:
    server_url: str
    ca_file: str | None
    door: str | None  # the door an allowed caller looks at
    open_code: str | None  # DTMF that opens the door during an answered call


Reporter = Callable[[str, dict[str, Any]], None]


class Phone(PolicyCarrier):
    """The policy's adapter for one phone: the server connection, the SIP leg, the media."""

    def __init__(self, settings: PhoneSettings, gateway: GatewaySettings, engine: Engine, report: Reporter,
                 snapshot: Callable[[bytes], None]) -> None:
        super().__init__()
        self.settings = settings
        self.gateway = gateway
        self.engine = engine
        self.report = report
        self._snapshot = snapshot
        self.calls = ResidentPolicy(ResidentRules(answer="ignore", hangup_after_frames=None))
        self.client = SignalingClient(gateway.server_url, settings.user_id, settings.access_token,
                                      device_id=settings.device_id, on_event=self._event,
                                      on_connection=self._connection, claims=self.calls.claims,
                                      ca_file=gateway.ca_file)
        self.leg: Leg | None = None
        self.pc: RTCPeerConnection | None = None
        self.sound: PhoneSound | None = None
        self._offer: dict[str, Any] | None = None
        self._digits = ""
        self._runner: asyncio.Task[None] | None = None

    @property
    def busy(self) -> bool:
        return self.leg is not None or (self.calls.call is not None and self.calls.call.live)

    def status(self) -> dict[str, Any]:
        call = self.calls.call
        return {"device_id": self.settings.device_id, "user_id": self.settings.user_id,
                "server": "connected" if self.client.connected.is_set() else (self.client.last_error or "connecting"),
                "call": None if call is None or not call.live else {"call_id": call.call_id, "state": call.state.value},
                "codec": self.leg.codec if self.leg is not None else None}

    def registration(self, registration: Registration) -> None:
        """The gateway's SIP registration, as this phone's device tells the server (/healthz)."""
        self.client.set_bridge_status({"kind": "sip", "registration": registration.state,
                                       "detail": registration.detail})

    def start(self) -> None:
        self._runner = asyncio.get_running_loop().create_task(self.client.run())

    async def close(self) -> None:
        await self._drop_leg()
        await self._close_media()
        await self.client.close()
        if self._runner is not None:
            self._runner.cancel()
            await asyncio.gather(self._runner, return_exceptions=True)

    def _connection(self, up: bool) -> None:
        self.report("server", {"device_id": self.settings.device_id, "connected": up})
        super()._connection(up)

    # -- inputs from the phone -------------------------------------------------------------------------

    def look_outside(self, leg: Leg) -> bool:
        """An allowed caller dialled in: call the door as this phone. False when it cannot."""
        if self.busy or not self.gateway.door or not self.client.connected.is_set():
            return False
        self._take_leg(leg)
        self._run(self.calls.look_outside(self.gateway.door, time.monotonic()))
        return True

    def _take_leg(self, leg: Leg) -> None:
        self.leg = leg
        self._digits = ""
        leg.on_answered(lambda: self._leg_answered(leg))
        leg.on_ended(lambda end: self._leg_ended(leg, end))
        leg.on_digit(lambda digit: self._digit(leg, digit))

    def _leg_answered(self, leg: Leg) -> None:
        call = self.calls.call
        if leg is not self.leg or call is None or not call.live:
            # Its 200 OK crossed our CANCEL (the ring was over): nobody is on the other end.
            self._spawn(leg.hang_up())
            return
        self.report("phone_answered", {"device_id": self.settings.device_id, "call_id": call.call_id,
                                       "codec": leg.codec})
        if call.answered:  # a look outside: the door answered first, the phone now
            return
        self.sound = PhoneSound(leg)
        self.sound.start()
        if self.settings.answer_key:
            self.sound.prompt(press_key_prompt(leg.sample_rate), loop=True)
        else:
            self._spawn(self._accept(call))

    def _leg_ended(self, leg: Leg, end: LegEnd) -> None:
        if leg is not self.leg:
            return
        self.leg = None
        if self.sound is not None:
            self.sound.stop()
            self.sound = None
        call = self.calls.call
        self.report("phone_ended", {"device_id": self.settings.device_id, "status": end.status, "reason": end.reason})
        if call is None or not call.live or call.call_id is None:
            return
        if call.answered:
            self._run(self.calls.hang_up(call))  # the phone hung up: the call is over
        elif end.status in (BUSY, DECLINED) and call.role != "caller":
            self._run([rules.Decline(call.call_id, busy=False)])
        elif call.role == "caller":
            self._run(self.calls.hang_up(call))  # the caller gave up on looking outside

    def _digit(self, leg: Leg, digit: str) -> None:
        call = self.calls.call
        if leg is not self.leg or call is None or not call.live:
            return
        self.report("digit", {"device_id": self.settings.device_id, "digit": digit})
        if not call.answered:
            if self.settings.answer_key and digit == self.settings.answer_key and call.role != "caller":
                if self.sound is not None:
                    self.sound.prompt(None)
                self._spawn(self._accept(call))
            return
        code = self.gateway.open_code
        if not code:
            return
        self._digits = (self._digits + digit)[-len(code):]
        if self._digits == code:
            self._digits = ""
            self._spawn(self._open_door(call))

    # -- carrying out what the policy decided ----------------------------------------------------------

    def _carry_out(self, effect: rules.Effect) -> None:
        match effect:
            case ArmClock(call, deadline):
                self._arm_clock(call, deadline)
            case rules.Rings(call, ring):
                self._offer = ring.offer
                self._spawn(self._ring(call))
            case rules.FetchPicture(call_id, url):
                self._spawn(self._fetch_snapshot(url))
            case rules.Decline(call_id, _):
                self._spawn(self._request("decline", call_id=call_id))
            case rules.DialDoor(call, door):
                self._spawn(self._dial_door(call, door))
            case rules.UseAnswer(call, answer):
                self._spawn(self._use_answer(answer))
            case rules.Answered(call, _):
                self._answered(call)
            case rules.HangUp(call):
                self._spawn(self._request("end", call_id=call.call_id))
            case rules.Ended(call, reason):
                self._ended(call, reason)
            case _:
                pass  # the resident's screen only: a missed press, media connected

    async def _ring(self, call: ClientCall) -> None:
        """The door rings this phone: the INVITE leaves at once."""
        uri = self.engine.target_uri(self.settings.target)
        self.report("dialing_phone", {"device_id": self.settings.device_id, "call_id": call.call_id, "uri": uri})
        try:
            leg = await self.engine.dial(uri)
        except Exception as exc:  # noqa: BLE001 - any refusal of the stack: the phone just does not ring
            log.warning("%s: could not call %s: %s", self.settings.device_id, uri, exc)
            self.report("phone_unreachable", {"device_id": self.settings.device_id, "error": str(exc)})
            return
        if not call.live or self.calls.call is not call:
            await leg.hang_up()  # the ring ended while the INVITE was being sent
            return
        self.report("invite_sent", {"device_id": self.settings.device_id, "call_id": call.call_id,
                                    "at": time.monotonic()})
        self._take_leg(leg)

    def _new_peer(self) -> RTCPeerConnection:
        pc = self.pc = RTCPeerConnection(rtc_configuration(self.client.ice_servers))
        pc.on("track", lambda track: self._door_sound(pc, track))
        pc.on("connectionstatechange", lambda: self._media_state(pc))
        return pc

    def _door_sound(self, pc: RTCPeerConnection, track: MediaStreamTrack) -> None:
        """The door's voice to the phone: its Opus packets straight to the phone's writer."""
        sound = self.sound
        if track.kind != "audio" or sound is None:
            return
        receiver = next(t.receiver for t in pc.getTransceivers() if t.receiver.track is track)
        if not decode_audio_elsewhere(receiver, sound.door_packet):
            self._spawn(door_to_phone(track, sound))

    async def _accept(self, call: ClientCall) -> None:
        """The phone took the call: answer the door's offer with the phone's voice, no video."""
        leg, offer = self.leg, self._offer
        if leg is None or offer is None or not call.live:
            return
        pc = self._new_peer()
        await pc.setRemoteDescription(RTCSessionDescription(**offer))
        for transceiver in pc.getTransceivers():
            if transceiver.kind == "video":
                transceiver.direction = "inactive"  # a phone shows no video: the door sends none
            elif transceiver.kind == "audio":
                transceiver.sender.replaceTrack(PhoneTrack(leg))
                send_audio_levels(transceiver.sender)
                transceiver.direction = "sendrecv"
        await pc.setLocalDescription(await pc.createAnswer())
        try:
            await self.client.request("accept", call_id=call.call_id,
                                      answer={"type": "answer", "sdp": pc.localDescription.sdp})
        except (RequestFailed, NotConnected, TimeoutError) as exc:
            self.report("accept_failed", {"device_id": self.settings.device_id, "error": str(exc)})
            await self._close_media()
            await self._drop_leg()
            return
        self._run(self.calls.answered(call, time.monotonic()))

    async def _dial_door(self, call: ClientCall, door: str) -> None:
        leg = self.leg
        if leg is None:
            return
        self.sound = PhoneSound(leg)
        pc = self._new_peer()
        send_audio_levels(pc.addTransceiver(PhoneTrack(leg), direction="sendrecv").sender)
        # The door answers with the m-lines it was offered and its camera needs one: offered
        # inactive, so no video is sent to a phone that cannot show it.
        pc.addTransceiver("video", direction="inactive")
        await pc.setLocalDescription(await pc.createOffer())
        try:
            reply = await self.client.request("dial", callees=[door], video=False,
                                              offer={"type": "offer", "sdp": pc.localDescription.sdp})
        except (RequestFailed, NotConnected, TimeoutError) as exc:
            self.calls.dial_failed()
            self.report("dial_failed", {"device_id": self.settings.device_id, "error": str(exc)})
            self.calls.call = None
            await self._close_media()
            await self._drop_leg(refuse=True)
            return
        self._run(self.calls.dialed(call, reply["call_id"], time.monotonic()))

    def _answered(self, call: ClientCall) -> None:
        self.report("answered", {"device_id": self.settings.device_id, "call_id": call.call_id})
        if call.role == "caller" and self.leg is not None:
            self.sound = self.sound or PhoneSound(self.leg)
            self.sound.start()
            self._spawn(self.leg.answer())  # the door took the look outside: the phone is connected
        self._watch_media(call)

    async def _open_door(self, call: ClientCall) -> None:
        """The open code: the server's audited door action, as this phone's device."""
        try:
            await self.client.request("action", call_id=call.call_id, name="open_door")
        except (RequestFailed, NotConnected, TimeoutError) as exc:
            self.report("open_door_refused", {"device_id": self.settings.device_id, "error": str(exc)})
            if self.sound is not None and self.leg is not None:
                self.sound.prompt(refused_prompt(self.leg.sample_rate))
            return
        self.report("door_opened", {"device_id": self.settings.device_id, "call_id": call.call_id})
        if self.sound is not None and self.leg is not None:
            self.sound.prompt(door_open_prompt(self.leg.sample_rate))

    async def _fetch_snapshot(self, path: str) -> None:
        """The visitor's picture, for handsets that show a JPEG URL while ringing."""
        try:
            async with aiohttp.ClientSession() as http, http.get(
                    http_base(self.client.url) + path, headers={"Authorization": f"Bearer {self.settings.access_token}"},
                    timeout=aiohttp.ClientTimeout(total=10), ssl=self.client.ssl_context) as resp:
                if resp.status == 200:
                    self._snapshot(await resp.read())
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.info("%s: no snapshot: %s", self.settings.device_id, exc)

    async def _request(self, kind: str, **body: Any) -> None:
        try:
            await self.client.request(kind, **body)
        except (RequestFailed, NotConnected, TimeoutError) as exc:
            log.info("%s: %s not taken: %s", self.settings.device_id, kind, exc)

    def _ended(self, call: ClientCall, reason: str) -> None:
        self._disarm_clock()
        self.report("ended", {"device_id": self.settings.device_id, "call_id": call.call_id, "reason": reason})
        self._spawn(self._drop_leg())
        self._spawn(self._close_media())

    async def _drop_leg(self, refuse: bool = False) -> None:
        """Over for the phone too: CANCEL while it rings (487), BYE once answered."""
        leg, self.leg = self.leg, None
        if self.sound is not None:
            self.sound.stop()
            self.sound = None
        if leg is not None:
            await (leg.reject(BUSY) if refuse else leg.hang_up())

    async def _close_media(self) -> None:
        self._stop_media_watch()
        pc, self.pc = self.pc, None
        if pc is not None:
            await pc.close()
