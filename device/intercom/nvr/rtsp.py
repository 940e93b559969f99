"""RTSP from the door: GStreamer's RTSP server, fed the camera's own H.264.

GStreamer's server (`gst-rtsp-server`, through PyGObject) does what an NVR needs of a camera:
Digest authentication, TCP and UDP transports, several clients on one stream, RTCP, and the
ONVIF backchannel. It runs its own GLib main loop on a thread of its own, the edge, as the
camera and the sound card do; the event loop only pushes buffers into `appsrc` elements,
which take them from any thread.

Two paths, so that who may talk is decided by GStreamer's own permission check:
- `/door`: the camera (and the microphone, when `rtsp.audio` allows it), for every account.
  A client there that asks for the backchannel gets 551 (go2rtc then asks again without it).
- `/talk`: the same, plus the ONVIF backchannel (PCMU), only for accounts in `rtsp.talk`;
  others get 404. Each such client gets a stream of its own (GStreamer never shares one with
  a backchannel): cheap, since nothing is encoded.

A new client starts at a keyframe: the encoder is asked for one when a stream is made and
whenever a client starts playing, as for calls.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
from collections.abc import Callable
from typing import Any

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtsp", "1.0")
gi.require_version("GstRtspServer", "1.0")
import numpy as np  # noqa: E402
from gi.repository import GLib, Gst, GstRtsp, GstRtspServer  # noqa: E402

from ..media.audio import FRAME_SAMPLES, RATE, packed_s16  # noqa: E402
from ..media.pacing import Pacer  # noqa: E402
from ..media.threads import name_thread  # noqa: E402
from ..media.video import AccessUnit, EncodedVideo  # noqa: E402
from .settings import NvrSettings  # noqa: E402
from .talk import TalkGate  # noqa: E402

log = logging.getLogger("intercom.rtsp")

TALK_PATH = "/talk"
VIEWER, TALKER = "viewer", "talker"
ACCOUNT = "intercom.account"

_VIDEO = ('appsrc name=video is-live=true format=time do-timestamp=true max-bytes=4000000 leaky-type=downstream '
          'caps="video/x-h264,stream-format=byte-stream,alignment=au" '
          '! rtph264pay name=pay0 pt=96 config-interval=0 aggregate-mode=zero-latency')
_AUDIO_IN = ('appsrc name=audio is-live=true format=time do-timestamp=true max-bytes=200000 leaky-type=downstream '
             f'caps="audio/x-raw,format=S16LE,rate={RATE},channels=1,layout=interleaved" ')
#: The microphone to viewers, by `rtsp.audio`.
_AUDIO = {
    "opus": _AUDIO_IN + "! opusenc bitrate=32000 audio-type=voice ! rtpopuspay name=pay1 pt=97",
    "pcmu": _AUDIO_IN + "! audioresample ! audio/x-raw,rate=8000 ! mulawenc ! rtppcmupay name=pay1 pt=0",
}
#: What a talking client sends (G.711 µ-law, what go2rtc and Scrypted send cameras), to the
#: speaker's own format.
_BACKCHANNEL = ('( capsfilter name=depay_backchannel '
                'caps="application/x-rtp,media=audio,payload=0,clock-rate=8000,encoding-name=PCMU" '
                '! rtppcmudepay ! mulawdec ! audioconvert ! audioresample '
                f'! audio/x-raw,format=S16LE,rate={RATE},channels=1 '
                '! appsink name=backchannel emit-signals=true sync=false async=false )')


class _Stream:
    """One GStreamer stream (media): its sources, fed from the event loop."""

    def __init__(self, video: Any, audio: Any, request_keyframe: Callable[[], None]) -> None:
        self.video_src = video
        self.audio_src = audio
        self._request_keyframe = request_keyframe
        self._waiting_for_key = True

    def _offer(self, unit: AccessUnit) -> None:
        """An access unit from the camera, on the loop (`EncodedVideo.subscribe`), once the
        stream plays. Before that appsrc has no clock to stamp it with; a keyframe stamped
        anyhow (which a busy machine made likely: preparing took longer than the keyframe)
        left clients waiting for time to catch up. So the stream starts at the first
        keyframe after it plays, asked for then."""
        if self.video_src.get_clock() is None:
            return
        if self._waiting_for_key and not unit.keyframe:
            self._request_keyframe()  # merged with any request on its way (EncodedVideo)
            return
        self._waiting_for_key = False
        self.video_src.emit("push-buffer", Gst.Buffer.new_wrapped(unit.data))

    def push_audio(self, samples: bytes) -> None:
        """The microphone's 20 ms, once the stream is playing: before that, appsrc has no clock
        to stamp them with, and samples stamped anyhow made ffmpeg wait for time to catch up."""
        if self.audio_src is not None and self.audio_src.get_clock() is not None:
            self.audio_src.emit("push-buffer", Gst.Buffer.new_wrapped(samples))


class _Backchannel:
    """A talking client's audio, cut into the speaker's 20 ms frames (on GStreamer's thread)."""

    def __init__(self, key: int, media: Any, talk: TalkGate) -> None:
        self.key = key
        #: Held, so that GStreamer's later signals about this media give the same Python
        #: object (and the same key) rather than a new wrapper.
        self.media = media
        self.account = "?"
        self.opened = False
        self._talk = talk
        self._pending = np.zeros(0, np.int16)

    def sample(self, sink: Any) -> Gst.FlowReturn:
        sample = sink.emit("pull-sample")
        if sample is None:
            return Gst.FlowReturn.EOS
        buffer = sample.get_buffer()
        ok, info = buffer.map(Gst.MapFlags.READ)
        if not ok:
            return Gst.FlowReturn.OK
        try:
            self._pending = np.concatenate([self._pending, np.frombuffer(info.data, np.int16)])
        finally:
            buffer.unmap(info)
        whole = len(self._pending) // FRAME_SAMPLES * FRAME_SAMPLES
        for i in range(0, whole, FRAME_SAMPLES):
            self._talk.deliver(self.key, self._pending[i:i + FRAME_SAMPLES])
        self._pending = self._pending[whole:]
        return Gst.FlowReturn.OK


class RtspServer:
    """The door's RTSP server. `start` and `stop` are called on the event loop."""

    def __init__(self, settings: NvrSettings, video: EncodedVideo, talk: TalkGate,
                 microphone: Callable[[], Any] | None = None) -> None:
        """`microphone` opens a raw microphone track for viewers, when `rtsp.audio` is on."""
        self.settings = settings
        self._video = video
        self._talk = talk
        self._microphone = microphone
        self._loop: asyncio.AbstractEventLoop | None = None
        self._streams: dict[int, _Stream] = {}
        self._keys = itertools.count()
        #: Connections that have played and not closed (the viewers), held so that later
        #: signals about one give the same Python object, and so the same key.
        self._clients: dict[int, Any] = {}
        self._backchannels: dict[int, _Backchannel] = {}
        self._mic_task: asyncio.Task[None] | None = None
        self._context: Any = None
        self._main: Any = None
        self._thread: threading.Thread | None = None
        self._server: Any = None
        self._source_id = 0
        self.streams_made = 0

    def start(self) -> None:
        """Listen on `rtsp.port`; raises OSError, in one line, when it cannot."""
        self._loop = asyncio.get_running_loop()
        Gst.init(None)
        self._context = GLib.MainContext.new()
        self._main = GLib.MainLoop.new(self._context, False)
        server = GstRtspServer.RTSPOnvifServer.new()
        server.set_address(self.settings.listen)
        server.set_service(str(self.settings.port))
        server.set_auth(self._auth())
        mounts = server.get_mount_points()
        mounts.add_factory("/door", self._factory(talk=False))
        mounts.add_factory(TALK_PATH, self._factory(talk=True))
        server.connect("client-connected", self._client_connected)
        self._source_id = server.attach(self._context)
        if not self._source_id:
            raise OSError(f"rtsp.port {self.settings.port} on {self.settings.listen} is taken by another program "
                          f"(or not allowed): choose another port")
        self._server = server
        self._thread = threading.Thread(target=self._run, name="rtsp", daemon=True)
        self._thread.start()
        log.info("RTSP at rtsp://%s:%d/door (%d accounts; talk: %s)", self.settings.listen, self.settings.port,
                 len(self.settings.accounts), ", ".join(sorted(self.settings.talk)) or "nobody")

    def _run(self) -> None:
        name_thread("rtsp")
        self._main.run()

    def _auth(self) -> Any:
        auth = GstRtspServer.RTSPAuth()
        auth.set_supported_methods(GstRtsp.RTSPAuthMethod.DIGEST)
        auth.set_realm("intercom")
        for name, password in self.settings.accounts.items():
            token = GstRtspServer.RTSPToken()
            token.set_string("media.factory.role", TALKER if self.settings.may_talk(name) else VIEWER)
            token.set_string(ACCOUNT, name)
            auth.add_digest(name, password, token)
        return auth

    def _factory(self, talk: bool) -> Any:
        factory = GstRtspServer.RTSPOnvifMediaFactory()
        factory.set_media_gtype(GstRtspServer.RTSPOnvifMedia)
        parts = [_VIDEO] + ([_AUDIO[self.settings.audio]] if self.settings.audio in _AUDIO else [])
        factory.set_launch("( " + " ".join(parts) + " )")
        factory.set_shared(True)
        if talk:
            factory.set_backchannel_launch(_BACKCHANNEL)
            factory.set_backchannel_bandwidth(64000)
        permissions = GstRtspServer.RTSPPermissions()
        for role in (TALKER,) if talk else (VIEWER, TALKER):
            permissions.add_permission_for_role(role, "media.factory.access", True)
            permissions.add_permission_for_role(role, "media.factory.construct", True)
        factory.set_permissions(permissions)
        factory.connect("media-configure", self._configure)
        return factory

    # -- GStreamer's thread ------------------------------------------------------------------------

    def _configure(self, factory: Any, media: Any) -> None:
        """A stream is made (at a DESCRIBE): register its sources with the loop."""
        element = media.get_element()
        stream = _Stream(element.get_by_name("video"), element.get_by_name("audio"), self._video.keyframe_requested)
        key = next(self._keys)
        sink = element.get_by_name("backchannel")
        if sink is not None:
            backchannel = _Backchannel(key, media, self._talk)
            self._backchannels[hash(media)] = backchannel
            sink.connect("new-sample", backchannel.sample)
        media.connect("unprepared", self._unprepared, key)
        self._to_loop(self._attach, key, stream)

    def _unprepared(self, media: Any, key: int) -> None:
        backchannel = self._backchannels.pop(hash(media), None)
        if backchannel is not None and backchannel.opened:
            self._talk.close(key)
        self._to_loop(self._detach, key)

    def _client_connected(self, server: Any, client: Any) -> None:
        client.connect("describe-request", self._described)
        client.connect("play-request", self._play)
        client.connect("closed", self._closed)

    def _closed(self, client: Any) -> None:
        """A connection closed: its sessions go with it. RTSP lets a session outlive its
        connection (for UDP), which GStreamer honours for 60 s; an NVR that reconnects makes a
        new one anyway, and the door should not feed a stream nobody watches meanwhile."""
        self._clients.pop(hash(client), None)
        pool = self._server.get_session_pool()

        def drop(client: Any, session: Any, *data: Any) -> Any:
            pool.remove(session)
            return GstRtspServer.RTSPFilterResult.REMOVE

        client.session_filter(drop, None)

    def _described(self, client: Any, ctx: Any) -> None:
        """The account is known here (GStreamer authenticates a DESCRIBE, not every PLAY)."""
        backchannel = self._backchannels.get(hash(ctx.media)) if ctx.media is not None else None
        if backchannel is not None and ctx.token is not None:
            backchannel.account = ctx.token.get_string(ACCOUNT) or "?"

    def _play(self, client: Any, ctx: Any) -> None:
        """A client starts playing: it needs a complete picture now, not at the next IDR."""
        self._clients[hash(client)] = client
        self._to_loop(self._video.keyframe_requested)
        backchannel = self._backchannels.get(hash(ctx.media)) if ctx.media is not None else None
        if backchannel is not None and not backchannel.opened:
            backchannel.opened = True
            self._talk.open(backchannel.key, backchannel.account)

    def _to_loop(self, callback: Callable[..., None], *args: Any) -> None:
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:
            pass  # the loop has closed: the daemon is stopping

    # -- the event loop ---------------------------------------------------------------------------

    def _attach(self, key: int, stream: _Stream) -> None:
        self._streams[key] = stream
        self.streams_made += 1
        self._video.subscribe(stream)
        self._video.keyframe_requested()
        if stream.audio_src is not None and self._microphone is not None and self._mic_task is None:
            self._mic_task = asyncio.get_running_loop().create_task(self._listen(), name="rtsp-microphone")

    def _detach(self, key: int) -> None:
        stream = self._streams.pop(key, None)
        if stream is not None:
            self._video.unsubscribe(stream)
        if self._mic_task is not None and not any(s.audio_src is not None for s in self._streams.values()):
            self._mic_task.cancel()
            self._mic_task = None

    async def _listen(self) -> None:
        """The microphone to every stream that carries audio, while one does. A microphone
        that cannot be opened gives silence, with one error in the log: a stream whose audio
        never starts would never start its video either."""
        assert self._microphone is not None
        try:
            track = self._microphone()
        except Exception as exc:  # noqa: BLE001 - ALSA's errors are many; the video must go on
            log.error("rtsp.audio: cannot open the microphone (%s); viewers get silence", exc)
            await self._silence()
            return
        try:
            while True:
                samples = packed_s16(await track.recv())
                for stream in list(self._streams.values()):
                    stream.push_audio(samples)
        finally:
            track.stop()

    async def _silence(self) -> None:
        pacer, silence = Pacer(RATE / FRAME_SAMPLES), bytes(FRAME_SAMPLES * 2)
        while True:
            await pacer.next()
            for stream in list(self._streams.values()):
                stream.push_audio(silence)

    @property
    def viewers(self) -> int:
        """Connections that are playing (from PLAY until they close)."""
        return len(self._clients)

    def status(self) -> dict[str, Any]:
        return {"port": self.settings.port, "viewers": self.viewers, "streams": len(self._streams),
                "streams_made": self.streams_made, "audio": self.settings.audio, "talk": self._talk.status()}

    async def stop(self) -> None:
        """Stop serving and let go of everything `start` took: the listening source, the
        sessions, the GLib thread. GStreamer's objects hold our callbacks, and through them the
        camera, so a stopped server left attached would keep the camera's encoder alive."""
        if self._mic_task is not None:
            self._mic_task.cancel()
            await asyncio.gather(self._mic_task, return_exceptions=True)
        for stream in self._streams.values():
            self._video.unsubscribe(stream)
        self._streams.clear()
        if self._server is not None:
            pool = self._server.get_session_pool()
            pool.filter(lambda pool, session, *data: GstRtspServer.RTSPFilterResult.REMOVE, None)
            self._server.client_filter(lambda server, client, *data: GstRtspServer.RTSPFilterResult.REMOVE, None)
            source = self._context.find_source_by_id(self._source_id)
            if source is not None:
                source.destroy()
        if self._main is not None:
            self._main.quit()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 2)
        self._clients.clear()
        self._backchannels.clear()
        self._server = None
