"""The door's outputs for NVRs, composed: RTSP, ONVIF, snapshots and the talk rule.

The station makes one `NvrOutputs` when `rtsp:` is in its YAML, and only then imports this
module (and so GStreamer): a door without it never loads GStreamer.
"""

from __future__ import annotations

import importlib.metadata
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

from ..media.video import EncodedVideo
from .http import NvrHttp
from .httpauth import HttpAuth
from .onvif import Camera, Onvif, UsernameTokens
from .rtsp import RtspServer
from .settings import NvrSettings
from .talk import TalkGate


def _mac() -> str:
    node = uuid.getnode()
    return ":".join(f"{(node >> shift) & 0xFF:02x}" for shift in range(40, -8, -8))


def _version() -> str:
    try:
        return importlib.metadata.version("intercom")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


class NvrOutputs:
    def __init__(self, settings: NvrSettings, door_id: str, camera: dict[str, Any], video: EncodedVideo,
                 snapshot: Callable[[], Awaitable[bytes | None]], in_call: Callable[[], bool],
                 play: Callable[[np.ndarray], None], microphone: Callable[[], Any] | None) -> None:
        self.settings = settings
        self.talk = TalkGate(in_call, play)
        self.rtsp = RtspServer(settings, video, self.talk, microphone if settings.audio != "off" else None)
        described = Camera(serial=door_id, firmware=_version(), width=camera["width"], height=camera["height"],
                           fps=camera["fps"], bitrate=camera["bitrate"], gop=camera["iperiod"],
                           rtsp_port=settings.port, mac=_mac())
        self.onvif = Onvif(described, UsernameTokens(settings.accounts))
        self.http = NvrHttp(settings.listen, settings.onvif_port, self.onvif, HttpAuth(settings.accounts), snapshot) \
            if settings.onvif_port else None

    async def start(self) -> None:
        self.rtsp.start()
        if self.http is not None:
            try:
                await self.http.start()
            except OSError:
                await self.rtsp.stop()
                raise

    async def stop(self) -> None:
        if self.http is not None:
            await self.http.stop()
        await self.rtsp.stop()

    def status(self) -> dict[str, Any]:
        return {**self.rtsp.status(), "onvif_port": self.settings.onvif_port or None,
                "onvif_requests": self.onvif.requests, "onvif_refused": self.onvif.refused,
                "snapshots": self.http.snapshots if self.http is not None else 0}
