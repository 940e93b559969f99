"""Peer connection settings shared by the door and resident clients."""

from __future__ import annotations

from typing import Any

from aiortc import RTCConfiguration, RTCIceServer


def rtc_configuration(ice_servers: list[dict[str, Any]]) -> RTCConfiguration:
    """Always an explicit list: given none, aiortc would ask a public STUN server and, with
    no internet, wait seconds for it (5 s per peer, measured). An empty list is right on a LAN."""
    return RTCConfiguration(iceServers=[
        RTCIceServer(urls=e["urls"], username=e.get("username"), credential=e.get("credential"))
        for e in ice_servers])
