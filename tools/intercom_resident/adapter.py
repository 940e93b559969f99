"""What every carrier of the resident policy does the same way, whatever it carries the calls
to (aiortc and a report on stdout for the command-line resident, a SIP phone for the gateway):
the server's events, the link and the call's one clock go into the policy, and the effects
it returns come back to `_carry_out`."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiortc import RTCPeerConnection, RTCSessionDescription

from intercom.media.peer import watch_received
from intercom.signaling import SignalingClient
from intercom_protocol import resident as rules
from intercom_protocol.calls import ClientCall
from intercom_protocol.messages import Incoming, parse_event
from intercom_protocol.resident import ResidentPolicy


class PolicyCarrier:
    """A subclass sets `calls` and `client` (whose callbacks are `_event` and `_connection`)
    and implements `_carry_out`."""

    calls: ResidentPolicy
    client: SignalingClient
    pc: RTCPeerConnection | None

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()
        #: The live call's own clock (`ClientCall.deadline`).
        self._clock: asyncio.TimerHandle | None = None
        #: Reports whether the answered call's media still arrives (`watch_received`).
        self._media_watch: asyncio.Task[None] | None = None

    def _carry_out(self, effect: rules.Effect) -> None:
        raise NotImplementedError

    def _run(self, effects: list[rules.Effect]) -> None:
        for effect in effects:
            self._carry_out(effect)

    def _connection(self, up: bool) -> None:
        now = time.monotonic()
        self._run(self.calls.signed_in(self.client.live_calls, now) if up else self.calls.link_lost(now))

    def _event(self, message: dict[str, Any]) -> None:
        now = time.monotonic()
        event = parse_event(message)
        if isinstance(event, Incoming):
            self._run(self.calls.incoming(event, now))
        elif event is not None:
            self._run(self.calls.event(event, now))

    def _on_clock(self, call: ClientCall) -> None:
        self._run(self.calls.clock(call, time.monotonic()))

    def _media_state(self, pc: RTCPeerConnection) -> None:
        if pc is self.pc:
            self._run(self.calls.media(pc.connectionState, time.monotonic()))

    def _arm_clock(self, call: ClientCall, deadline: float | None) -> None:
        self._disarm_clock()
        if deadline is not None:
            self._clock = asyncio.get_running_loop().call_later(max(0.0, deadline - time.monotonic()),
                                                                self._on_clock, call)

    def _disarm_clock(self) -> None:
        if self._clock is not None:
            self._clock.cancel()
            self._clock = None

    def _watch_media(self, call: ClientCall) -> None:
        """The answered call's media, watched for silence (the policy's `media_heard`)."""
        if self.pc is not None:
            pc = self.pc
            self._media_watch = asyncio.get_running_loop().create_task(
                watch_received(pc, lambda: self.calls.media_heard(call, time.monotonic())))

    def _stop_media_watch(self) -> None:
        if self._media_watch is not None:
            self._media_watch.cancel()
            self._media_watch = None

    async def _use_answer(self, answer: dict[str, Any]) -> None:
        """The door's answer to our offer (a look outside)."""
        if self.pc is not None:
            await self.pc.setRemoteDescription(RTCSessionDescription(**answer))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
