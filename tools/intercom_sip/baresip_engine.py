"""The gateway's SIP stack: baresip through `baresip-python` (libre and baresip in one wheel,
with an asyncio API and raw PCM per call). The only module that imports it: the rest of the
gateway sees `engine.Engine` and `engine.Leg`.

One stack per process (the library's rule), one account in it. The stack re-registers by
itself; a registration that failed is tried again every `retry_s`, so a FritzBox that
rebooted finds the gateway back without anyone restarting it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import baresip

from .engine import AccountSettings, Leg, LegEnd, Registration

log = logging.getLogger("intercom.sip.engine")

#: The stack's names of the codecs the YAML offers, with their rates (a bare name means 8 kHz).
CODECS = {"g722": "g722/16000/1", "opus": "opus/48000/2", "pcmu": "pcmu", "pcma": "pcma"}
_STATUS = re.compile(r"^\s*([1-6][0-9][0-9])\b")
#: How long a REGISTER may go unanswered before the registrar counts as unreachable.
REGISTER_TIMEOUT_S = 5.0


def status_of(text: str | None) -> int | None:
    match = _STATUS.match(text or "")
    return int(match.group(1)) if match else None


#: A phone's answer to an offer it cannot take: with `srtp: optional` the gateway offers
#: RTP/AVP with keys, and a phone that requires SRTP (RTP/SAVP) refuses it so, before it rings.
NOT_ACCEPTABLE = 488

Redial = Callable[[], Awaitable[Any]]


class BaresipLeg:
    """One baresip call behind the `Leg` interface. An outgoing call refused with 488 is dialled
    once more with SRTP required (`redial`), behind the same leg: the phone had not rung yet."""

    def __init__(self, call: Any, peer: str, redial: Redial | None = None) -> None:
        self._call = call
        self._redial = redial
        self._hung_up = False
        self.peer = peer
        self._answered: list[Callable[[], None]] = []
        self._ended: list[Callable[[LegEnd], None]] = []
        self._digits: list[Callable[[str], None]] = []
        self.ended: LegEnd | None = None
        self.established = False
        self._bind(call)

    def _bind(self, call: Any) -> None:
        self._call = call
        call.on(lambda event: self._event(call, event))
        call.on_dtmf(lambda d: [cb(d.digit) for cb in list(self._digits)] if call is self._call else None)

    # A callback given after the fact (an answer or end replayed from before the leg was
    # handed out) is called at once, on the loop's next turn.

    def on_answered(self, callback: Callable[[], None]) -> None:
        self._answered.append(callback)
        if self.established:
            asyncio.get_running_loop().call_soon(callback)

    def on_ended(self, callback: Callable[[LegEnd], None]) -> None:
        self._ended.append(callback)
        if self.ended is not None:
            asyncio.get_running_loop().call_soon(callback, self.ended)

    def on_digit(self, callback: Callable[[str], None]) -> None:
        self._digits.append(callback)

    def _event(self, call: Any, event: baresip.StackEvent) -> None:
        if call is not self._call:
            return
        kind = event.event
        if kind is baresip.Event.CALL_CLOSED and self._redial is not None and not self._hung_up \
                and status_of(event.text) == NOT_ACCEPTABLE:
            redial, self._redial = self._redial, None
            asyncio.get_running_loop().create_task(self._again(redial, event.text or ""))
            return
        if kind is baresip.Event.CALL_ESTABLISHED:
            self.established = True
            for answered in list(self._answered):
                answered()
        elif kind is baresip.Event.CALL_CLOSED:
            self._closed(LegEnd(status_of(event.text), event.text or ""))

    async def _again(self, redial: Redial, text: str) -> None:
        try:
            call, early = await redial()
        except baresip.BaresipError as exc:
            self._closed(LegEnd(NOT_ACCEPTABLE, f"{text}; with SRTP required: {exc}"))
            return
        self._bind(call)
        self.replay(call, early)
        if self._hung_up:
            await self.hang_up()

    def replay(self, call: Any, early: list[baresip.StackEvent]) -> None:
        """The call's events from before it was bound, in order."""
        for event in early:
            self._event(call, event)

    def _closed(self, end: LegEnd) -> None:
        if self.ended is None:
            self.ended = end
            for ended in list(self._ended):
                ended(end)

    async def answer(self) -> None:
        with contextlib.suppress(baresip.StaleHandleError):
            await self._call.answer()

    async def reject(self, status: int) -> None:
        # baresip-python 0.5 refuses with 486 whatever the reason: no other status can be chosen.
        with contextlib.suppress(baresip.StaleHandleError):
            await self._call.reject()

    async def hang_up(self) -> None:
        self._hung_up = True
        with contextlib.suppress(baresip.StaleHandleError):
            await self._call.hangup()

    @property
    def sample_rate(self) -> int:
        try:
            return int(self._call.audio.info().tx_sample_rate)
        except baresip.AudioNotActive:
            return 0

    @property
    def codec(self) -> str:
        rate = self.sample_rate
        return {16000: "G.722", 8000: "G.711", 48000: "Opus"}.get(rate, f"{rate} Hz") if rate else ""

    def read(self, max_bytes: int) -> bytes:
        try:
            return bytes(self._call.audio.read(max_bytes))
        except (baresip.AudioNotActive, baresip.AudioRestarted):
            return b""

    def write(self, pcm: bytes) -> int:
        try:
            return int(self._call.audio.write(pcm))
        except (baresip.AudioNotActive, baresip.AudioRestarted):
            return 0


class BaresipEngine:
    def __init__(self, account: AccountSettings, retry_s: float = 30.0) -> None:
        self.settings = account
        self.retry_s = retry_s
        self._runtime: Any = None
        self._ua: Any = None
        self._secure_ua: Any = None
        #: Call events seen while a dial was on its way (see `_dial`).
        self._early: list[baresip.StackEvent] = []
        self._dialing = 0
        self._on_registration: Callable[[Registration], None] = lambda r: None
        self._retry: asyncio.Task[None] | None = None
        self.registration = Registration("unregistered")
        self._last_ok = 0.0

    def target_uri(self, target: str) -> str:
        if target.startswith(("sip:", "sips:")):
            return target
        return f"sip:{target}@{self.settings.domain}"

    async def start(self, on_registration: Callable[[Registration], None], on_incoming: Callable[[Leg], None]) -> None:
        s = self.settings
        extra = f"sip_listen {s.listen}\n" if s.listen else ""
        self._runtime = baresip.Runtime()
        await self._runtime.start(baresip.Config(net_interface=s.interface, max_concurrent_calls=None,
                                                 extra_config_text=extra))
        self._runtime.subscribe(self._keep_early)
        params = {"optional": ("mediaenc=srtp",), "mandatory": ("mediaenc=srtp-mand",)}.get(s.srtp, ())
        account = baresip.Account(user=s.user, domain=s.domain, password=s.password, registrar=s.registrar,
                                  transport=s.transport, reg_interval=s.reg_interval_s,
                                  audio_codecs=tuple(CODECS[c] for c in s.codecs), dtmf_mode=s.dtmf,
                                  extra_params=params)
        self._ua = await baresip.UserAgent.create(self._runtime, account)
        if s.srtp == "optional":  # for phones that require SRTP: never registers, only dials
            secure = dataclasses.replace(account, reg_interval=0, extra_params=("mediaenc=srtp-mand",))
            self._secure_ua = await baresip.UserAgent.create(self._runtime, secure)
        self._on_registration = on_registration
        self._ua.on(self._ua_event)
        self._ua.on_incoming(lambda call: on_incoming(BaresipLeg(call, call.peer or "")))
        if s.reg_interval_s:
            self._retry = asyncio.get_running_loop().create_task(self._keep_registered())

    def _set(self, registration: Registration) -> None:
        if registration != self.registration:
            self.registration = registration
            self._on_registration(registration)

    def _ua_event(self, event: baresip.StackEvent) -> None:
        if event.event is baresip.Event.REGISTER_OK:
            self._registered()
        elif event.event is baresip.Event.REGISTER_FAIL:
            self._set(self._failure(event.text or ""))

    def _registered(self) -> None:
        self._last_ok = time.monotonic()
        self._set(Registration("registered", status=200))

    @property
    def _registrar(self) -> str:
        return self.settings.registrar or self.settings.domain

    def _failure(self, text: str) -> Registration:
        status = status_of(text)
        where = self._registrar
        if status in (401, 403, 407):
            return Registration("failed", f"{where} refused the gateway's user or password ({text.strip()})", status)
        if status is not None:
            return Registration("failed", f"{where} answered {text.strip()}", status)
        return Registration("failed", f"{where} did not answer ({text.strip() or 'no reply'})")

    async def _keep_registered(self) -> None:
        """Registered, or trying again every `retry_s`. A registrar that stopped answering is
        noticed on the gateway's own clock: the stack's refresh would wait out SIP's 32 s
        transaction timer before it says anything."""
        while True:
            overdue = time.monotonic() - self._last_ok > self.settings.reg_interval_s + REGISTER_TIMEOUT_S
            if self.registration.state == "registered" and overdue:
                self._set(Registration("failed", f"{self._registrar} did not answer a refresh for "
                                                 f"{self.settings.reg_interval_s + REGISTER_TIMEOUT_S:g} s"))
            if self.registration.state != "registered":
                if self.registration.state == "unregistered":
                    self._set(Registration("registering"))
                try:
                    await self._ua.register(timeout=REGISTER_TIMEOUT_S)
                except baresip.RegistrationError as exc:
                    self._set(self._failure(str(exc.reason or exc).removeprefix("registration failed: ")
                                            if exc.status is None else f"{exc.status} {exc.reason or ''}"))
                else:
                    self._registered()
            await asyncio.sleep(self.retry_s if self.registration.state != "registered" else 1.0)

    async def dial(self, uri: str) -> Leg:
        call, early = await self._dial(self._ua, uri)
        secure = self._secure_ua
        leg = BaresipLeg(call, uri, redial=(lambda: self._dial(secure, uri)) if secure is not None else None)
        leg.replay(call, early)
        return leg

    async def _dial(self, ua: Any, uri: str) -> tuple[Any, list[baresip.StackEvent]]:
        """A new call, and the events the stack reported for it before the library had made
        its object: a phone that refuses at once (488) can answer before `dial` returns, and
        that event would reach no listener. No await between here and the leg's binding."""
        self._dialing += 1
        try:
            call = await ua.dial(uri)
        finally:
            self._dialing -= 1
        early = [e for e in self._early if e.call == call.handle]
        if not self._dialing:
            self._early.clear()
        return call, early

    def _keep_early(self, event: baresip.StackEvent) -> None:
        if self._dialing and event.call:
            self._early.append(event)

    async def close(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._retry
        if self._ua is not None:
            with contextlib.suppress(baresip.BaresipError):
                await self._ua.unregister(timeout=2.0)
        if self._runtime is not None:
            await self._runtime.close()
