"""The Platform API against its own served OpenAPI document, fuzzed by schemathesis.

The server runs on its own event loop in a thread: schemathesis makes blocking requests, and
the test must not block the loop that serves them.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, given, settings

from intercom_server.app import create_app
from intercom_server.openapi import OPENAPI
from intercom_server.settings import HubSettings
from intercom_server.store import Store

from .conftest import API_TOKEN


class ThreadedServer:
    def __init__(self, db: Path) -> None:
        self.db = db
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._start())
        self._started.set()
        self._loop.run_forever()

    async def _start(self) -> None:
        self.store = await Store.open(self.db)
        await self.store.users.add_site("home", "Home")
        await self.store.users.add_user("door", "door", "home", "Front door")
        await self.store.users.add_user("alice", "resident", "home", "Alice")
        self.runner = web.AppRunner(create_app(self.store, HubSettings(), API_TOKEN))
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"

    def start(self) -> None:
        self._thread.start()
        assert self._started.wait(10), "the server did not start"

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self._loop).result(10)
        asyncio.run_coroutine_threadsafe(self.store.close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadedServer]:
    server = ThreadedServer(tmp_path_factory.mktemp("openapi") / "intercom.db")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def api_schema(live_server: ThreadedServer) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{live_server.url}/v1/openapi.json")


# Operations are listed from the document in the code, and tested as the server serves it.
OPERATIONS = [(path, method) for path, item in OPENAPI["paths"].items() for method in item]


@pytest.mark.parametrize("path, method", OPERATIONS, ids=[f"{m.upper()} {p}" for p, m in OPERATIONS])
def test_the_platform_api_keeps_its_openapi_contract(api_schema: schemathesis.BaseSchema, path: str,
                                                     method: str) -> None:
    """Generated requests, valid and invalid, get the documented statuses, content types and
    bodies, and never a server error. (schemathesis' pytest plugin does not load on pytest 9,
    so its strategies are driven by hypothesis directly.)"""
    operation = api_schema[path][method]

    @given(case=operation.as_strategy())
    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def check(case: schemathesis.Case) -> None:
        case.call_and_validate(headers={"Api-Token": API_TOKEN})

    check()


def test_the_document_is_served_without_credentials(live_server: ThreadedServer) -> None:
    response = requests.get(f"{live_server.url}/v1/openapi.json", timeout=5)
    assert response.status_code == 200
    document = response.json()
    assert document["openapi"].startswith("3.1")
    assert {"/v1/sites", "/v1/users", "/v1/direct_calls", "/v1/sites/{site_id}/audit"} <= set(document["paths"])
