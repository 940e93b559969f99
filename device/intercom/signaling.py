"""The WebSocket client to the signaling server, used by the door and by resident clients.

It owns the connection's life: connect, authenticate, reconnect with exponential backoff and
jitter when the server goes away, and match replies to requests by id. Events from the
server go to `on_event`; the server's own requests (the door action) go to `on_request`,
whose return value or ProtocolError becomes the reply.

Nothing waits forever on a server that may be gone: a connection attempt has a deadline,
WebSocket pings find a dead or frozen server within 1.5 heartbeats (the server's own
`heartbeat_s`), and a request gives up after its timeout. A reply that comes after its
request gave up is handed to the request's `undo` (a late `dial` is ended, not left ringing).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import ssl
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import aiohttp

from intercom_protocol import messages as m
from intercom_protocol.requests import RequestFailed, RequestTracker

log = logging.getLogger("intercom.signaling")

EventHandler = Callable[[dict[str, Any]], Awaitable[None] | None]
RequestHandler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
Undo = Callable[[dict[str, Any]], Awaitable[None] | None]

#: A TCP connect and WebSocket handshake that take longer than this are given up and retried
#: (aiohttp's own default waits up to 300 s, so a healed network went unnoticed for minutes).
CONNECT_TIMEOUT_S = 10.0
#: Pings until the server has told its own heartbeat.
DEFAULT_HEARTBEAT_S = 10.0

__all__ = ["NotConnected", "RequestFailed", "SignalingClient"]


class NotConnected(Exception):
    pass


def tls_context(ca_file: str | None) -> ssl.SSLContext | bool:
    """For wss://: the installer's own CA when one is given (`server.ca_file`), else the system's."""
    return ssl.create_default_context(cafile=ca_file) if ca_file else True


def backoff_delays(first: float = 0.5, cap: float = 30.0) -> Iterator[float]:
    """Exponential backoff with jitter, so a building's doors do not reconnect in step."""
    return (random.uniform(first / 2, min(cap, first * 2**n)) for n in itertools.count())


class SignalingClient:
    def __init__(
        self,
        url: str,
        user_id: str,
        access_token: str,
        device_id: str | None = None,
        on_event: EventHandler | None = None,
        on_request: RequestHandler | None = None,
        on_connection: Callable[[bool], None] | None = None,
        request_timeout_s: float = 10.0,
        claims: Callable[[], list[str]] | None = None,
        ca_file: str | None = None,
        quick_replies: list[dict[str, str]] | None = None,
    ) -> None:
        self.url = url
        self.user_id = user_id
        self._token = access_token
        self.device_id = device_id
        self._on_event = on_event
        self._on_request = on_request
        self._on_connection = on_connection
        self._timeout = request_timeout_s
        #: A door's quick replies ({id, label}), told to the server at each sign-in.
        self.quick_replies = quick_replies
        #: A bridge's state ({kind, registration, detail}): see `set_bridge_status`.
        self.bridge_status: dict[str, str] | None = None
        self._telling: set[asyncio.Task[None]] = set()
        #: The calls this client still holds, told to the server at every sign-in so that it
        #: ends the ones this process no longer knows (see docs/protocol.md, authenticate).
        self._claims = claims
        self.ssl_context = tls_context(ca_file)
        self.heartbeat_s = DEFAULT_HEARTBEAT_S
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._requests: RequestTracker[asyncio.Future[dict[str, Any]], Undo] = RequestTracker("r")
        self.session_info: dict[str, Any] = {}
        self.connected = asyncio.Event()
        self.last_error: str | None = None
        #: Sessions so far: more than one means the link was lost (or the server moved it) and made again.
        self.sign_ins = 0
        self._closing = False

    @property
    def live_calls(self) -> set[str]:
        """The calls the server listed for this device at the last sign-in (`ok.calls`)."""
        calls = self.session_info.get("calls")
        return {str(c.get("call_id")) for c in calls if isinstance(c, dict)} if isinstance(calls, list) else set()

    @property
    def ice_servers(self) -> list[dict[str, Any]]:
        return list(self.session_info.get("ice_servers", []))

    async def run(self) -> None:
        """Stay connected until `close()`; each failed attempt waits a little longer."""
        delays = backoff_delays()
        timeout = aiohttp.ClientTimeout(total=None, connect=CONNECT_TIMEOUT_S, sock_connect=CONNECT_TIMEOUT_S)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            while not self._closing:
                try:
                    await self._session(http)
                    delays = backoff_delays()  # a session that authenticated resets the backoff
                except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                    self.last_error = f"server unreachable: {exc}"
                    log.warning("%s", self.last_error)
                except RequestFailed as exc:
                    self.last_error = f"authentication refused: {exc.message}"
                    log.error("%s", self.last_error)
                if self._closing:
                    break
                delay = next(delays)
                log.info("reconnecting in %.1fs", delay)
                await asyncio.sleep(delay)

    async def _session(self, http: aiohttp.ClientSession) -> None:
        # The whole handshake has a deadline: a black-holed link accepts nothing and answers nothing.
        ws = await asyncio.wait_for(http.ws_connect(self.url, heartbeat=self.heartbeat_s, ssl=self.ssl_context,
                                                    max_msg_size=4 * 1024 * 1024), CONNECT_TIMEOUT_S)
        async with ws:
            self._ws = ws
            reader = asyncio.get_running_loop().create_task(self._read(ws))
            try:
                body: dict[str, Any] = {"user_id": self.user_id, "access_token": self._token}
                if self.device_id:
                    body["device_id"] = self.device_id
                if self._claims is not None:
                    body["calls"] = self._claims()
                if self.quick_replies:
                    body["quick_replies"] = self.quick_replies
                if self.bridge_status:
                    body["bridge"] = self.bridge_status
                info = await self.request("authenticate", _before_auth=True, **body)
                self.session_info = info
                self.device_id = info["device_id"]
                heartbeat = info.get("heartbeat_s")
                if isinstance(heartbeat, (int, float)) and heartbeat > 0 and heartbeat != self.heartbeat_s:
                    # aiohttp takes the interval at connect: it applies from the next connection.
                    self.heartbeat_s = float(heartbeat)
                self.last_error = None
                self.sign_ins += 1
                self.connected.set()
                if self.bridge_status != body.get("bridge"):
                    self._tell_bridge_status()  # it changed while the sign-in was on its way
                log.info("signed in to %s as %s/%s", self.url, self.user_id, self.device_id)
                if self._on_connection:
                    self._on_connection(True)
                await reader
            finally:
                was_connected = self.connected.is_set()
                self.connected.clear()
                self._ws = None
                reader.cancel()
                # Replies come on the connection that asked: none will now.
                for fut in self._requests.close():
                    if not fut.done():
                        fut.set_exception(NotConnected("connection to the server was lost"))
                if was_connected and self._on_connection:
                    self._on_connection(False)

    def set_bridge_status(self, status: dict[str, str]) -> None:
        """A bridge's state (the SIP gateway's registration): told to the server now when signed
        in, and with every sign-in (`authenticate.bridge`), so the server always has the last."""
        self.bridge_status = status
        if self.connected.is_set():
            self._tell_bridge_status()

    def _tell_bridge_status(self) -> None:
        async def tell() -> None:
            try:
                await self.request("status", bridge=self.bridge_status)
            except (RequestFailed, NotConnected, TimeoutError) as exc:
                log.info("the bridge's status was not taken: %s (it goes with the next sign-in)", exc)

        task = asyncio.get_running_loop().create_task(tell())
        self._telling.add(task)
        task.add_done_callback(self._telling.discard)

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            try:
                data = m.parse_incoming(msg.data)
            except m.ProtocolError as exc:
                log.warning("ignoring a bad frame from the server: %s", exc.message)
                continue
            kind = data["type"]
            if kind in m.REPLY_TYPES:
                settled = self._requests.settle(data)
                if settled.undo is not None:
                    result = settled.undo(data)
                    if asyncio.iscoroutine(result):
                        asyncio.get_running_loop().create_task(result)
                fut = settled.waiter
                if fut is not None and not fut.done():
                    failure = settled.failure()
                    if failure is None:
                        fut.set_result(data)
                    else:
                        fut.set_exception(failure)
            elif "id" in data:
                asyncio.get_running_loop().create_task(self._answer(data))
            elif self._on_event is not None:
                result = self._on_event(data)
                if asyncio.iscoroutine(result):
                    asyncio.get_running_loop().create_task(result)
        if ws.close_code and ws.close_code >= 4000:
            self.last_error = f"server closed the connection ({ws.close_code})"

    async def _answer(self, req: dict[str, Any]) -> None:
        try:
            if self._on_request is None:
                raise m.ProtocolError(m.ErrorCode.BAD_REQUEST, f"this client does not handle '{req['type']}'")
            reply = m.ok(req["id"], **await self._on_request(req))
        except m.ProtocolError as exc:
            reply = m.error(req["id"], exc.code, exc.message)
        except Exception as exc:  # the server must get an answer whatever happened
            log.exception("handling server request %s", req.get("type"))
            reply = m.error(req["id"], m.ErrorCode.INTERNAL, str(exc))
        await self.send(reply)

    async def send(self, message: dict[str, Any]) -> None:
        if self._ws is None:
            raise NotConnected("not connected to the server")
        await self._ws.send_str(m.encode(message))

    async def request(self, kind: str, _before_auth: bool = False, undo: Undo | None = None,
                      **body: Any) -> dict[str, Any]:
        """Send a request and wait for its reply; raises RequestFailed on an `error` reply.

        `undo` is called with the `ok` that arrives after this request timed out (the sender
        gave up, so whatever the server did for it must be taken back)."""
        if not _before_auth and not self.connected.is_set():
            raise NotConnected("not connected to the server")
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        message = self._requests.start(kind, fut, undo, **body)
        rid = message["id"]
        try:
            await self.send(message)
            return await asyncio.wait_for(fut, self._timeout)
        except TimeoutError:
            self._requests.give_up(rid)
            raise
        finally:
            self._requests.forget(rid)

    def reconfigure(self, url: str, user_id: str, access_token: str, device_id: str | None) -> None:
        """New server details (a reloaded config), used from the next connection on."""
        self.url, self.user_id, self._token, self.device_id = url, user_id, access_token, device_id

    def reconnect(self) -> None:
        """Drop the current connection so the next one uses what `reconfigure` set."""
        if self._ws is not None:
            asyncio.get_running_loop().create_task(self._ws.close())

    async def close(self) -> None:
        self._closing = True
        if self._ws is not None:
            await self._ws.close()
