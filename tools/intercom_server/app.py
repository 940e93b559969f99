"""The server's HTTP face, composed: the WebSocket at /v1/ws and the Platform REST API under /v1
(`api/`, a module per resource), and what runs beside them while the server runs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Coroutine
from pathlib import Path
from typing import Any

from aiohttp import web

from .api import accounts, availability, calls, health, push, webhooks, websocket
from .api.common import (
    API_TOKEN,
    DATABASE,
    HUB,
    MESSAGES,
    MQTT,
    PUBLIC_URL,
    STORE,
    WEBHOOKS,
    DatabaseHealth,
    json_errors,
)
from .cluster import ClusterSettings
from .compose import make_state
from .database import DatabaseError
from .hub import Hub
from .mqtt import MqttBridge
from .settings import HubSettings
from .store import Store
from .visitor_messages import MessageBox
from .webapp import add_webapp_routes
from .webhooks import Webhooks

log = logging.getLogger("intercom.server")


def create_app(store: Store, settings: HubSettings, api_token: str, public_url: str = "",
               cluster: ClusterSettings | None = None) -> web.Application:
    """The one place the server is composed: with `cluster`, this process is one of several
    sharing the store and a Redis (`compose.make_state` picks the state backend)."""
    app = web.Application(middlewares=[json_errors])
    app[STORE] = store
    app[HUB] = hub = Hub(store, settings, make_state(settings, cluster))
    app[API_TOKEN] = api_token
    app[PUBLIC_URL] = public_url
    app[DATABASE] = DatabaseHealth()
    for resource in (websocket, health, accounts, calls, push):
        resource.add_routes(app)
    add_webapp_routes(app)
    for resource in (availability, webhooks):
        resource.add_routes(app)
    app.cleanup_ctx.extend([_load_hub, _watch_database, _watch_revocations])
    if not hub.state.stopping.end_calls:  # calls outlive a process: none closes them at start
        app.cleanup_ctx.append(_close_lost_calls)
    _add_integrations(app, store, settings)

    async def on_shutdown(app: web.Application) -> None:
        await app[HUB].shutdown()

    app.on_shutdown.append(on_shutdown)
    return app


def _add_integrations(app: web.Application, store: Store, settings: HubSettings) -> None:
    """Visitors' messages, webhooks and (if configured) MQTT, each with its life beside the app's."""
    hub = app[HUB]
    messages = settings.messages.directory or (Path(store.path).parent / "messages" if store.path else None)
    if messages is None:
        raise ValueError("messages.directory must be set when the database is not an SQLite file")
    app[MESSAGES] = MessageBox(messages, store, settings.messages)
    app.cleanup_ctx.append(_sweep_messages)
    app[WEBHOOKS] = Webhooks(store, settings.webhooks)
    hub.events.listen(app[WEBHOOKS].on_event)
    app.cleanup_ctx.append(_run_webhooks)
    if settings.mqtt is not None:
        app[MQTT] = MqttBridge(settings.mqtt, hub.service, store, hub.rules, hub.door_presence, hub.door_action,
                               hub.events, hub.state.lease("mqtt"))
        app.cleanup_ctx.append(_run_mqtt)


async def _load_hub(app: web.Application) -> AsyncIterator[None]:
    """What the hub keeps in memory so that a press reads nothing: the availability rules and
    the push subscriptions."""
    await app[HUB].start()
    yield
    await app[HUB].close()


@contextlib.asynccontextmanager
async def _running(work: Coroutine[Any, Any, None], name: str) -> AsyncIterator[None]:
    """A background loop for as long as the app runs (a cleanup context's body)."""
    task = asyncio.get_running_loop().create_task(work, name=name)
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _watch_database(app: web.Application) -> AsyncIterator[None]:
    """Ask the database every `health_check_s`; when it stops answering, say so (/healthz 503,
    new connections refused), and when it answers again, take connections again: nobody
    restarts the server. Live calls go on meanwhile; their records fail and are counted."""
    store, health, every = app[STORE], app[DATABASE], app[HUB].settings.health_check_s

    async def watch() -> None:
        while True:
            try:
                await asyncio.wait_for(store.ping(), max(1.0, every))
            except (DatabaseError, OSError, TimeoutError) as exc:
                error = str(exc) or type(exc).__name__
                if health.ok:
                    log.error("the database does not answer (%s): refusing new connections until it does", error)
                health.ok, health.error = False, error
            else:
                if not health.ok:
                    log.warning("the database answers again: taking connections")
                health.ok, health.error = True, None
            await asyncio.sleep(every)

    async with _running(watch(), "database-health"):
        yield


async def _close_lost_calls(app: web.Application) -> AsyncIterator[None]:
    """In a cluster no process closes the calls of the last stop at start (the others' are
    live): a call still open in the database past the longest a call can last lost its state
    (Redis restarted without persistence) and is closed `unknown`, by whichever process looks."""
    store, settings = app[STORE], app[HUB].settings

    async def sweep() -> None:
        while True:
            try:
                closed = await store.calls.close_interrupted_calls(time.time() - settings.max_duration_s - 300)
                if closed:
                    log.warning("%d call(s) lost their state (Redis restarted empty?): recorded as ended 'unknown'",
                                closed)
            except Exception:  # tried again at the next round
                log.exception("closing lost calls")
            await asyncio.sleep(60)

    async with _running(sweep(), "lost-calls"):
        yield


async def _watch_revocations(app: web.Application) -> AsyncIterator[None]:
    """A token revoked from a shell (`intercom-server token revoke`, another process) ends its
    live sessions within a second: SQLite's data_version says when another connection wrote,
    so an idle server reads nothing else."""
    hub, store = app[HUB], app[STORE]

    async def watch() -> None:
        seen = await store.changed_elsewhere()
        while True:
            await asyncio.sleep(REVOCATION_CHECK_S)
            try:
                version = await store.changed_elsewhere()
                if version != seen:
                    seen = version
                    await hub.signin.revoked()
                    await hub.rules.reload()
                    await hub.directory.refresh()
            except Exception:  # a failed check is tried again, the server goes on
                log.exception("checking for revoked tokens")

    async with _running(watch(), "revocations"):
        yield


async def _sweep_messages(app: web.Application) -> AsyncIterator[None]:
    """The retention policy, at start and every `sweep_every_s` (and after each upload)."""
    box = app[MESSAGES]

    async def sweep() -> None:
        while True:
            try:
                await box.sweep()
            except Exception:  # tried again at the next round
                log.exception("sweeping visitor messages")
            await asyncio.sleep(box.settings.sweep_every_s)

    async with _running(sweep(), "message-retention"):
        yield


async def _run_webhooks(app: web.Application) -> AsyncIterator[None]:
    await app[WEBHOOKS].start()
    yield
    await app[WEBHOOKS].close()


async def _run_mqtt(app: web.Application) -> AsyncIterator[None]:
    app[MQTT].start()
    yield
    await app[MQTT].close()


#: How often the server looks for tokens revoked by another process.
REVOCATION_CHECK_S = 1.0
