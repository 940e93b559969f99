"""A peer connection made ready while the door is idle, so a press sends its dial at once.

Building a call's peer connection costs the door 10-20 ms (a DTLS certificate, the
transceivers, the offer, and gathering candidates, which aiortc does before
`setLocalDescription` returns): measured as most of the door's share of press-to-ring. None
of that depends on the visitor, so the door does it ahead: the connection waits with its
offer made and candidates gathered, without tracks (the microphone's sound card stays free,
and the camera's stream is not queued for nobody). At the press the door takes it, gives it
its tracks (`replaceTrack`), and sends the offer it already has.

What could go stale is replaced: the connection is rebuilt when the ICE servers change (the
server hands new TURN credentials at each sign-in), and every `refresh_s` (a NAT's mapping
behind a server-reflexive candidate lasts a minute or two; host addresses change with DHCP).
A press that finds nothing ready, or a stale one, builds a connection as before: slower,
never wrong.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiortc import RTCPeerConnection

log = logging.getLogger("intercom.standby")

#: How long a prepared connection is kept before it is rebuilt.
REFRESH_S = 60.0


@dataclass
class StandbyStats:
    prepared: int = 0
    taken: int = 0
    #: Presses that found nothing ready (being built, stale, or ICE servers changed).
    missed: int = 0


@dataclass
class _Ready:
    pc: RTCPeerConnection
    ice_key: str
    made_at: float


class StandbyPeer:
    """One prepared connection at a time, on the event loop.

    `build(ice_servers)` makes a connection with its transceivers and no tracks; the offer
    and gathering happen here. `take(ice_servers)` hands it over (or None); `prepare()` asks
    for the next one, which is built in the background.
    """

    def __init__(self, build: Callable[[list[dict[str, Any]]], RTCPeerConnection],
                 ice_servers: Callable[[], list[dict[str, Any]]], refresh_s: float = REFRESH_S) -> None:
        self._build = build
        self._ice_servers = ice_servers
        self.refresh_s = refresh_s
        self._ready: _Ready | None = None
        self._making: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False
        self._closing: set[asyncio.Task[None]] = set()
        self.stats = StandbyStats()

    @staticmethod
    def _key(ice_servers: list[dict[str, Any]]) -> str:
        return json.dumps(ice_servers, sort_keys=True)

    @property
    def ready(self) -> bool:
        return self._ready is not None

    def take(self) -> RTCPeerConnection | None:
        """The prepared connection, if one is ready for today's ICE servers; it is the caller's
        from now on. None means: build one now."""
        ready, self._ready = self._ready, None
        self._cancel_timer()
        if ready is not None and ready.ice_key == self._key(self._ice_servers()) \
                and time.monotonic() - ready.made_at < self.refresh_s:
            self.stats.taken += 1
            return ready.pc
        self.stats.missed += 1
        if ready is not None:
            self._discard(ready.pc)
        return None

    def prepare(self) -> None:
        """Have a connection ready for the next press (no-op if one is, or is being made)."""
        if self._closed or self._making is not None:
            return
        if self._ready is not None:
            if self._ready.ice_key == self._key(self._ice_servers()):
                return
            self.renew()  # the ICE servers changed since it was made
            return
        self._making = asyncio.get_running_loop().create_task(self._make(), name="standby-peer")

    def renew(self) -> None:
        """Replace the prepared connection (it aged, or what it was made with changed)."""
        ready, self._ready = self._ready, None
        self._cancel_timer()
        if ready is not None:
            self._discard(ready.pc)
        self.prepare()

    async def _make(self) -> None:
        ice_servers = self._ice_servers()
        pc: RTCPeerConnection | None = None
        try:
            pc = self._build(ice_servers)
            await pc.setLocalDescription(await pc.createOffer())
        except asyncio.CancelledError:
            if pc is not None:
                self._discard(pc)
            raise
        except Exception:
            log.exception("could not prepare a peer connection for the next press")
            if pc is not None:
                self._discard(pc)
            return
        finally:
            self._making = None
        if self._closed:
            self._discard(pc)
            return
        self._ready = _Ready(pc, self._key(ice_servers), time.monotonic())
        self.stats.prepared += 1
        self._timer = asyncio.get_running_loop().call_later(self.refresh_s, self.renew)
        if self._ready.ice_key != self._key(self._ice_servers()):
            self.renew()  # they changed while this one was gathering

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _discard(self, pc: RTCPeerConnection) -> None:
        task = asyncio.get_running_loop().create_task(pc.close(), name="standby-peer-close")
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        self._closed = True
        self._cancel_timer()
        if self._making is not None:
            self._making.cancel()
            await asyncio.gather(self._making, return_exceptions=True)
            self._making = None
        ready, self._ready = self._ready, None
        if ready is not None:
            self._discard(ready.pc)
        await asyncio.gather(*self._closing, return_exceptions=True)
