"""Fixtures: a real server on a loopback port, and a raw WebSocket client to drive it."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import ipaddress
import json
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from intercom_protocol.messages import REPLY_TYPES, Event, Incoming, parse_event
from intercom_protocol.requests import RequestTracker
from intercom_server.app import HUB, create_app
from intercom_server.cluster import ClusterSettings
from intercom_server.hub import Hub
from intercom_server.settings import HubSettings
from intercom_server.store import Store
from intercom_sim.cluster import Redis
from intercom_sim.harness import Installation
from intercom_sim.postgres import Postgres


def self_signed_certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A CA of our own that signed 127.0.0.1's certificate, as a private install has."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Intercom test CA")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


OFFER = {"type": "offer", "sdp": "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"}
ANSWER = {"type": "answer", "sdp": "v=0\r\no=- 2 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"}


def received(message: dict[str, Any]) -> Event:
    """A server event as a client receives it: parsed from its wire form."""
    event = parse_event(message)
    assert event is not None, message
    return event


def ring_event(call_id: str, caller: dict[str, Any], **extra: Any) -> Incoming:
    """`incoming` for a call, as a callee's device receives it."""
    event = received({"type": "incoming", "call_id": call_id, "caller": caller, "offer": OFFER, "video": True,
                      "created_at": "2026-11-22T08:00:00.000Z", "expires_in_s": 30, **extra})
    assert isinstance(event, Incoming)
    return event
API_TOKEN = "test-api-token-0123456789"


class WsClient:
    """Speaks protocol v1 frame by frame, so tests can also send what no real client would."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.requests: RequestTracker[asyncio.Future[dict[str, Any]], None] = RequestTracker("t")
        self.reader = asyncio.get_running_loop().create_task(self._read())
        self.device_id: str | None = None

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(msg.data)
            fut = self.requests.settle(data).waiter if data["type"] in REPLY_TYPES else None
            if fut is not None:
                fut.set_result(data)
            else:
                await self.inbox.put(data)

    async def send_raw(self, text: str) -> None:
        await self.ws.send_str(text)

    async def request(self, kind: str, timeout: float = 5.0, **body: Any) -> dict[str, Any]:
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        await self.ws.send_str(json.dumps(self.requests.start(kind, fut, **body)))
        return await asyncio.wait_for(fut, timeout)

    async def next(self, kind: str | None = None, timeout: float = 5.0) -> dict[str, Any]:
        """The next event (of `kind`, skipping others such as pong)."""
        async def get() -> dict[str, Any]:
            while True:
                event = await self.inbox.get()
                if kind is None or event["type"] == kind:
                    return event
        return await asyncio.wait_for(get(), timeout)

    def assert_quiet(self) -> None:
        """No event is waiting. Call it only after the server answered a later request of this
        client: a connection's frames arrive in order, so an event sent before would be here."""
        assert self.inbox.empty(), f"unexpected event: {self.inbox.get_nowait()}"

    async def close(self) -> None:
        await self.ws.close()
        self.reader.cancel()


class ServerUnderTest:
    def __init__(self, store: Store, url: str, http: aiohttp.ClientSession, settings: HubSettings, hub: Hub) -> None:
        self.store = store
        self.hub = hub
        self.url = url
        self.ws_url = url.replace("http://", "ws://") + "/v1/ws"
        self.http = http
        self.settings = settings
        self._clients: list[WsClient] = []
        self._sites: set[str] = set()
        #: What a second process (a shell command) opens to reach the same data.
        self.database: str | Path = ""

    async def user(self, user_id: str, kind: str = "resident", site: str = "home") -> str:
        """Create a user (and its site) and return a fresh access token."""
        if site not in self._sites:
            await self.store.users.add_site(site, site.title())
            self._sites.add(site)
        await self.store.users.add_user(user_id, kind, site, user_id.title())
        return (await self.store.tokens.issue_token(user_id))["access_token"]

    async def connect(self) -> WsClient:
        ws = await self.http.ws_connect(self.ws_url)
        client = WsClient(ws)
        self._clients.append(client)
        return client

    async def signed_in(self, user_id: str, token: str, device_id: str | None = None, **extra: Any) -> WsClient:
        """A connection signed in as this user (`extra`: more of `authenticate`, e.g. a door's
        quick_replies)."""
        client = await self.connect()
        body = {"user_id": user_id, "access_token": token, **extra}
        if device_id:
            body["device_id"] = device_id
        reply = await client.request("authenticate", **body)
        assert reply["type"] == "ok", reply
        client.device_id = reply["device_id"]
        return client

    async def api(self, method: str, path: str, body: Any = None, token: str | None = API_TOKEN,
                  bearer: str | None = None) -> tuple[int, Any]:
        """A Platform API call with the master token, or as a party with `bearer` (its access token)."""
        headers = {"Authorization": f"Bearer {bearer}"} if bearer else {"Api-Token": token} if token else {}
        async with self.http.request(method, self.url + path, json=body, headers=headers) as resp:
            data = await resp.json() if resp.content_type == "application/json" else await resp.read()
            return resp.status, data

    async def close(self) -> None:
        for client in self._clients:
            await client.close()


@pytest.fixture
def settings() -> HubSettings:
    return HubSettings(ring_timeout_s=30.0, grace_s=0.5, auth_timeout_s=10.0, heartbeat_s=20.0)


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """One PostgreSQL server for the session, started only if a test asks for it."""
    pg = Postgres()
    try:
        yield pg
    finally:
        pg.stop()


#: The engines a store test runs on: `@pytest.mark.parametrize("database", ENGINES, indirect=True)`,
#: or `server` in place of `database` for a whole server on each.
ENGINES = ["sqlite", "postgresql"]


@pytest.fixture
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str | Path:
    """Where a store keeps its data: an SQLite file (the default), or a new PostgreSQL database."""
    if getattr(request, "param", "sqlite") == "postgresql":
        return cast(Postgres, request.getfixturevalue("postgres")).new_database()
    return tmp_path / "intercom.db"


#: The server's state backends: `@pytest.mark.backends(*BACKENDS)` on a module or a test runs
#: each of its tests that uses `server` once on each (one process in memory; one process of a
#: cluster, in Redis).
BACKENDS = ["memory", "redis"]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    marker = metafunc.definition.get_closest_marker("backends")
    if marker is not None and "backend" in metafunc.fixturenames:
        metafunc.parametrize("backend", marker.args, indirect=True)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Redis]:
    """One Redis for the session, started only if a test asks for it; each server keeps its
    keys under a prefix of its own."""
    redis = Redis(tmp_path_factory.mktemp("redis"))
    asyncio.run(redis.ready())
    try:
        yield redis
    finally:
        redis.stop()


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> ClusterSettings | None:
    """None for the memory backend, else the Redis one's settings."""
    if getattr(request, "param", "memory") == "memory":
        return None
    redis = cast(Redis, request.getfixturevalue("redis_server"))
    name = secrets.token_hex(4)
    return ClusterSettings(redis.url, name=f"test-{name}", prefix=f"test-{name}:", timer_poll_s=0.01)


@pytest.fixture
async def server(request: pytest.FixtureRequest, tmp_path: Path, settings: HubSettings,
                 backend: ClusterSettings | None) -> AsyncIterator[ServerUnderTest]:
    engine = getattr(request, "param", "sqlite")
    target: str | Path = tmp_path / "intercom.db"
    if engine == "postgresql":
        target = cast(Postgres, request.getfixturevalue("postgres")).new_database()
        settings.messages = dataclasses.replace(settings.messages, directory=tmp_path / "messages")
    store = await Store.open(target)
    app = create_app(store, settings, API_TOKEN, cluster=backend)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    async with aiohttp.ClientSession() as http:
        sut = ServerUnderTest(store, f"http://127.0.0.1:{port}", http, settings, app[HUB])
        sut.database = target
        yield sut
        await sut.close()
    await runner.cleanup()
    await store.close()


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    """Debian's Chromium, with a fake camera and microphone the resident allowed."""
    from playwright.async_api import async_playwright

    from intercom_sim.browser import BROWSER_ARGS, CHROMIUM, GRANT_MICROPHONE

    async with async_playwright() as pw:
        chromium = await pw.chromium.launch(executable_path=CHROMIUM, args=[*BROWSER_ARGS, GRANT_MICROPHONE])
        try:
            yield chromium
        finally:
            await chromium.close()


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Installation]:
    """A whole installation as processes: the server is up; doors and residents are added by
    each test."""
    installation = Installation(tmp_path)
    await installation.start_server()
    try:
        yield installation
    finally:
        await installation.close()
