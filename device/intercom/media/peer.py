"""Peer connection settings shared by the door and resident clients."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection


def rtc_configuration(ice_servers: list[dict[str, Any]]) -> RTCConfiguration:
    """Always an explicit list: given none, aiortc would ask a public STUN server and, with
    no internet, wait seconds for it (5 s per peer, measured). An empty list is right on a LAN."""
    return RTCConfiguration(iceServers=[
        RTCIceServer(urls=e["urls"], username=e.get("username"), credential=e.get("credential"))
        for e in ice_servers])


#: How often an answered call's peer connection is asked whether anything arrived: the
#: silence bound (`intercom_protocol.calls.MEDIA_SILENCE_S`) is counted in these steps.
MEDIA_CHECK_S = 2.0


async def packets_received(pc: RTCPeerConnection) -> int:
    """Every datagram the peer connection's transports received (RTP, RTCP and DTLS): a phone
    that sends no sound still sends RTCP for what it receives."""
    report = await pc.getStats()
    return sum(int(getattr(s, "packetsReceived", 0) or 0) for s in report.values() if s.type == "transport")


async def watch_received(pc: RTCPeerConnection, heard: Callable[[], None], every_s: float = MEDIA_CHECK_S) -> None:
    """Call `heard` after each `every_s` in which anything arrived, until cancelled. Reading
    the transport's counters this seldom costs nothing on the media's own path, where a hook
    per packet would."""
    seen = 0
    while True:
        await asyncio.sleep(every_s)
        received = await packets_received(pc)
        if received > seen:
            seen = received
            heard()
