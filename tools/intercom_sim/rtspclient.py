"""An RTSP client that asks the way go2rtc and Scrypted do, for the backchannel tests and bench.

go2rtc connects to a camera with OPTIONS, then DESCRIBE with `Require:
www.onvif.org/ver20/backchannel`, answers the Digest challenge, SETUPs every stream over the
RTSP connection itself (interleaved TCP), the backchannel included, and PLAYs; it then sends
G.711 in RTP on the backchannel's channel while it reads the video. This client follows that
order on a plain socket, so the door's server is tested against the requests NVRs make, not
against GStreamer's own client (whose backchannel push hangs from Python in 1.22).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import struct
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import av
import numpy as np

BACKCHANNEL = "www.onvif.org/ver20/backchannel"


class RtspError(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status


@dataclass
class Media:
    kind: str
    control: str
    direction: str
    payload: int
    channel: int = -1


@dataclass
class Received:
    packets: int = 0
    video_packets: int = 0
    #: Seconds from the first request to the first RTP packet of an IDR picture.
    first_keyframe_s: float | None = None
    channels: dict[int, int] = field(default_factory=dict)


def _md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def _is_keyframe(payload: bytes) -> bool:
    """Whether an H.264 RTP payload (RFC 6184) starts or carries an IDR slice."""
    if not payload:
        return False
    kind = payload[0] & 0x1F
    if kind == 5:
        return True
    if kind == 28 and len(payload) > 1:  # FU-A: the first fragment of an IDR
        return bool(payload[1] & 0x80) and payload[1] & 0x1F == 5
    if kind == 24:  # STAP-A
        i = 1
        while i + 2 < len(payload):
            size = struct.unpack("!H", payload[i:i + 2])[0]
            if payload[i + 2] & 0x1F == 5:
                return True
            i += 2 + size
    return False


class RtspClient:
    def __init__(self, url: str, backchannel: bool = True) -> None:
        parts = urlsplit(url)
        self.user, self.password = parts.username or "", parts.password or ""
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 554
        self.url = f"rtsp://{self.host}:{self.port}{parts.path}"
        self.backchannel = backchannel
        self.media: list[Media] = []
        self.sdp = ""
        self.received = Received()
        self._cseq = 0
        self._session: str | None = None
        self._auth: tuple[str, str] | None = None
        self._base = self.url
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._started = 0.0
        self._reading: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        """OPTIONS, DESCRIBE, SETUP each stream, PLAY; then read in the background."""
        self._started = time.monotonic()
        self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        await self.request("OPTIONS", self.url)
        headers, body = await self.request("DESCRIBE", self.url, {"Accept": "application/sdp"})
        self._base = headers.get("content-base", self.url)
        self.sdp = body.decode()
        self.media = _parse_sdp(self.sdp)
        for channel, media in enumerate(self.media):
            media.channel = channel * 2
            control = media.control if media.control.startswith("rtsp://") else self._base.rstrip("/") + "/" + media.control
            headers, _ = await self.request("SETUP", control, {
                "Transport": f"RTP/AVP/TCP;unicast;interleaved={channel * 2}-{channel * 2 + 1}"})
            self._session = headers["session"].split(";")[0]
        await self.request("PLAY", self.url, {"Range": "npt=0.000-"})
        self._reading = asyncio.get_running_loop().create_task(self._read())

    @property
    def talk_channel(self) -> int | None:
        return next((m.channel for m in self.media if m.kind == "audio" and m.direction == "sendonly"), None)

    async def request(self, method: str, url: str, extra: dict[str, str] | None = None) -> tuple[dict[str, str], bytes]:
        for attempt in range(2):
            headers = dict(extra or {})
            if self.backchannel:
                headers["Require"] = BACKCHANNEL
            if self._session:
                headers["Session"] = self._session
            if self._auth is not None:
                headers["Authorization"] = self._authorization(method, url)
            status, reason, reply, body = await self._exchange(method, url, headers)
            if status == 401 and attempt == 0 and self.user:
                challenge = reply.get("www-authenticate", "")
                realm = re.search(r'realm="([^"]*)"', challenge)
                nonce = re.search(r'nonce="([^"]*)"', challenge)
                if realm and nonce:
                    self._auth = (realm.group(1), nonce.group(1))
                    continue
            if status != 200:
                raise RtspError(status, reason)
            return reply, body
        raise AssertionError("unreachable")

    def _authorization(self, method: str, url: str) -> str:
        assert self._auth is not None
        realm, nonce = self._auth
        response = _md5(f"{_md5(f'{self.user}:{realm}:{self.password}')}:{nonce}:{_md5(f'{method}:{url}')}")
        return (f'Digest username="{self.user}", realm="{realm}", nonce="{nonce}", uri="{url}", '
                f'response="{response}"')

    async def _exchange(self, method: str, url: str, headers: dict[str, str]) -> tuple[int, str, dict[str, str], bytes]:
        assert self._reader is not None and self._writer is not None
        self._cseq += 1
        lines = [f"{method} {url} RTSP/1.0", f"CSeq: {self._cseq}", "User-Agent: go2rtc-order-test"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        self._writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await self._writer.drain()
        status_line = (await self._reader.readline()).decode().strip()
        _, status, reason = status_line.split(" ", 2)
        reply: dict[str, str] = {}
        while (line := (await self._reader.readline()).decode().strip()):
            key, _, value = line.partition(":")
            reply[key.strip().lower()] = value.strip()
        body = await self._reader.readexactly(int(reply.get("content-length", "0")))
        return int(status), reason, reply, body

    async def _read(self) -> None:
        """Interleaved RTP: count packets per channel, and note the first IDR's arrival."""
        assert self._reader is not None
        video = next((m.channel for m in self.media if m.kind == "video"), None)
        try:
            while True:
                head = await self._reader.readexactly(4)
                if head[0:1] != b"$":  # an RTSP reply to a keep-alive: not sent by this client
                    raise ConnectionError(f"unexpected bytes {head!r}")
                channel, size = head[1], struct.unpack("!H", head[2:4])[0]
                packet = await self._reader.readexactly(size)
                self.received.packets += 1
                self.received.channels[channel] = self.received.channels.get(channel, 0) + 1
                if channel == video:
                    self.received.video_packets += 1
                    offset = 12 + 4 * (packet[0] & 0x0F)
                    if self.received.first_keyframe_s is None and _is_keyframe(packet[offset:]):
                        self.received.first_keyframe_s = time.monotonic() - self._started
        except (asyncio.IncompleteReadError, ConnectionError):
            pass

    async def talk(self, samples: np.ndarray, rate: int = 8000) -> None:
        """Send mono s16 `samples` at `rate` as G.711 µ-law RTP on the backchannel, in real time."""
        assert self._writer is not None
        channel = self.talk_channel
        if channel is None:
            raise RtspError(0, "the server gave no backchannel")
        encoder = av.CodecContext.create("pcm_mulaw", "w")
        encoder.sample_rate, encoder.format, encoder.layout = rate, "s16", "mono"
        per_packet = rate // 50
        start = time.monotonic()
        for n, i in enumerate(range(0, len(samples) - per_packet + 1, per_packet)):
            frame = av.AudioFrame.from_ndarray(samples[i:i + per_packet].reshape(1, -1), format="s16", layout="mono")
            frame.sample_rate = rate
            payload = b"".join(bytes(p) for p in encoder.encode(frame))
            rtp = struct.pack("!BBHII", 0x80, 0, n & 0xFFFF, (n * per_packet) & 0xFFFFFFFF, 0x1C0FFEE) + payload
            self._writer.write(b"$" + bytes([channel]) + struct.pack("!H", len(rtp)) + rtp)
            await self._writer.drain()
            await asyncio.sleep(max(0.0, start + (n + 1) * 0.02 - time.monotonic()))  # real-time pacing, as a phone

    async def close(self) -> None:
        """Hang up by closing the connection, as go2rtc does: the server drops the session."""
        if self._reading is not None:
            self._reading.cancel()
            await asyncio.gather(self._reading, return_exceptions=True)
        if self._writer is not None:
            self._writer.close()


def _parse_sdp(sdp: str) -> list[Media]:
    media: list[Media] = []
    for line in sdp.splitlines():
        if line.startswith("m="):
            kind, _, _, payload = line[2:].split()[:4]
            media.append(Media(kind, "", "sendrecv", int(payload)))
        elif media and line.startswith("a=control:"):
            media[-1].control = line[len("a=control:"):].strip()
        elif media and line.strip() in ("a=sendonly", "a=recvonly", "a=sendrecv", "a=inactive"):
            media[-1].direction = line.strip()[2:]
    return media
