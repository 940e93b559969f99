"""The WebSocket client to the signaling server, used by the door and by resident clients.

It owns the connection's life: connect, authenticate, reconnect with exponential backoff and
jitter when the server goes away, and match replies to requests by id. Events from the
server go to `on_event`; the server's own requests (the door action) go to `on_request`,
whose return value or ProtocolError becomes the reply.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
from typing import Any, Awaitable, Callable, Iterator

import aiohttp

from .core import messages as m

log = logging.getLogger("intercom.signaling")

EventHandler = Callable[[dict[str, Any]], Awaitable[None] | None]
RequestHandler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


class RequestFailed(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class NotConnected(Exception):
    pass


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
    ) -> None:
        self.url = url
        self.user_id = user_id
        self._token = access_token
        self.device_id = device_id
        self._on_event = on_event
        self._on_request = on_request
        self._on_connection = on_connection
        self._timeout = request_timeout_s
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._ids = itertools.count(1)
        self.session_info: dict[str, Any] = {}
        self.connected = asyncio.Event()
        self.last_error: str | None = None
        self._closing = False

    @property
    def ice_servers(self) -> list[dict[str, Any]]:
        return list(self.session_info.get("ice_servers", []))

    async def run(self) -> None:
        """Stay connected until `close()`; each failed attempt waits a little longer."""
        delays = backoff_delays()
        async with aiohttp.ClientSession() as http:
            while not self._closing:
                try:
                    await self._session(http)
                    delays = backoff_delays()  # a session that authenticated resets the backoff
                except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
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
        async with http.ws_connect(self.url, heartbeat=20.0, max_msg_size=4 * 1024 * 1024) as ws:
            self._ws = ws
            reader = asyncio.get_running_loop().create_task(self._read(ws))
            try:
                body: dict[str, Any] = {"user_id": self.user_id, "access_token": self._token}
                if self.device_id:
                    body["device_id"] = self.device_id
                info = await self.request("authenticate", _before_auth=True, **body)
                self.session_info = info
                self.device_id = info["device_id"]
                self.last_error = None
                self.connected.set()
                log.info("signed in to %s as %s/%s", self.url, self.user_id, self.device_id)
                if self._on_connection:
                    self._on_connection(True)
                await reader
            finally:
                was_connected = self.connected.is_set()
                self.connected.clear()
                self._ws = None
                reader.cancel()
                for fut in self._pending.values():
                    if not fut.done():
                        fut.set_exception(NotConnected("connection to the server was lost"))
                self._pending.clear()
                if was_connected and self._on_connection:
                    self._on_connection(False)

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
            if kind in ("ok", "error"):
                fut = self._pending.pop(str(data.get("re")), None)
                if fut is not None and not fut.done():
                    if kind == "ok":
                        fut.set_result(data)
                    else:
                        fut.set_exception(RequestFailed(data.get("code", "internal"), data.get("message", "")))
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
        except Exception as exc:  # noqa: BLE001 - the server must get an answer whatever happened
            log.exception("handling server request %s", req.get("type"))
            reply = m.error(req["id"], m.ErrorCode.INTERNAL, str(exc))
        await self.send(reply)

    async def send(self, message: dict[str, Any]) -> None:
        if self._ws is None:
            raise NotConnected("not connected to the server")
        await self._ws.send_str(m.encode(message))

    async def request(self, kind: str, _before_auth: bool = False, **body: Any) -> dict[str, Any]:
        """Send a request and wait for its reply; raises RequestFailed on an `error` reply."""
        if not _before_auth and not self.connected.is_set():
            raise NotConnected("not connected to the server")
        rid = f"r{next(self._ids)}"
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        try:
            await self.send(m.request(kind, rid, **body))
            return await asyncio.wait_for(fut, self._timeout)
        finally:
            self._pending.pop(rid, None)

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
