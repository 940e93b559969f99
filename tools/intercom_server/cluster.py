"""Several server processes as one, through Redis: the state backend `compose.py` picks when
`cluster:` is configured. The interfaces live in `redis_state.py`; this module is the
process's life in the cluster around them.

- Messages for a device on another process are published on that process's channel, through
  one connection, so they keep the order they were made in; so are requests to a device
  there (the door, asked to open) and their answers. Site events for the integrations that
  run on one process (MQTT) go on one channel every process hears.
- Every process says it is alive every second (`proc:{name}`, a key that expires). One that
  stops on SIGTERM closes its connections (1012, "service restart"), whose devices come back
  through the load balancer to another process within their grace; one killed with SIGKILL
  is noticed by the others when its key expires, and one that comes back under the same name
  (a supervisor's restart) at once: either way its devices are taken off presence and their
  calls given the grace a disconnected device gets.
- A lease (`lease:{job}`) is held by one process, renewed with its heartbeat, and taken by
  another within `dead_after_s` of its holder's death.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import socket
import time
from dataclasses import dataclass
from typing import Any

from intercom_protocol import messages as m
from intercom_protocol.calls import DeviceRef

from .redis_state import RedisCalls, RedisFailures, RedisPresence, RedisTimers
from .state import Local, Stopping, device_key, device_of

log = logging.getLogger("intercom.server.cluster")

#: Renew a lease only if this process still holds it.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""


#: Connections to Redis a process opens at most (besides the one it publishes on).
REDIS_CONNECTIONS = 32


@dataclass
class ClusterSettings:
    redis_url: str
    #: This process's name in the cluster; by default its host name and process id.
    name: str = ""
    #: How often a process says it is alive; it is taken for dead after `dead_after_s` of silence.
    heartbeat_s: float = 1.0
    dead_after_s: float = 4.0
    #: How often the timers are polled: a ring timeout fires this much late at most. Each
    #: poll is a wake-up and a round trip of every process, whether anything is due or not.
    timer_poll_s: float = 0.25
    #: Keys are prefixed, so that one Redis may serve several clusters (or tests) apart.
    prefix: str = "intercom:"


class Unreachable(Exception):
    """Redis does not answer."""


class RedisLease:
    def __init__(self, state: RedisState, job: str) -> None:
        self._state, self._key = state, f"{state.prefix}lease:{job}"
        self._renew = state.redis.register_script(_RENEW)

    async def acquire(self) -> None:
        s = self._state
        while True:
            with contextlib.suppress(Exception):
                if await s.redis.set(self._key, s.name, nx=True, px=int(s.settings.dead_after_s * 1000)):
                    return
            await asyncio.sleep(s.settings.heartbeat_s)

    async def lost(self) -> None:
        s = self._state
        while True:
            await asyncio.sleep(s.settings.heartbeat_s)
            try:
                if not await self._renew(keys=[self._key], args=[s.name, int(s.settings.dead_after_s * 1000)]):
                    return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - Redis away: the lease may pass to another
                log.warning("could not renew the lease %s: %s", self._key, exc)
                return

    async def release(self) -> None:
        with contextlib.suppress(Exception):
            if await self._state.redis.get(self._key) == self._state.name:
                await self._state.redis.delete(self._key)


class RedisState:
    def __init__(self, settings: ClusterSettings, live_ttl_s: float) -> None:
        import redis.asyncio as aioredis  # only a cluster needs it

        self.settings = settings
        self.name = settings.name or f"{socket.gethostname()}-{os.getpid()}"
        self.prefix = p = settings.prefix
        # A burst (thousands of devices leaving at once) waits for a connection of a bounded
        # pool, rather than failing as "too many connections" and leaving stale presence.
        self.redis = aioredis.Redis.from_pool(aioredis.BlockingConnectionPool.from_url(
            settings.redis_url, decode_responses=True, socket_timeout=5, socket_connect_timeout=5,
            health_check_interval=10, max_connections=REDIS_CONNECTIONS, timeout=5))
        #: Publishing goes through one connection of its own, in order.
        self._publisher = aioredis.from_url(settings.redis_url, decode_responses=True, socket_timeout=5,
                                            socket_connect_timeout=5, max_connections=1)
        self.presence = RedisPresence(self.redis, p, self.name)
        self.calls = RedisCalls(self.redis, p, self.name, live_ttl_s)
        self.timers = RedisTimers(self.redis, p, settings.timer_poll_s)
        self.failures = RedisFailures(self.redis, p)
        self.backplane = self
        self.stopping = Stopping(end_calls=False, close_code=m.CLOSE_SERVICE_RESTART,
                                 close_reason="this server restarts: connect again")
        self._outbox: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        self._channel = f"{p}proc:{self.name}"
        self._events = f"{p}events"
        self._tasks: list[asyncio.Task[None]] = []
        self._polls: list[asyncio.Task[None]] = []
        self._asks: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._handlers: set[asyncio.Task[Any]] = set()
        self._local: Local | None = None
        self._stopping = asyncio.Event()
        #: Whether Redis answered the last heartbeat (and why not), for /healthz.
        self.ok = True
        self.error: str | None = None

    @property
    def local(self) -> Local:
        assert self._local is not None, "start() first"
        return self._local

    # -- life ------------------------------------------------------------------------------

    async def start(self, local: Local) -> None:
        self._local = local
        self.calls.here = local.is_local
        try:
            await self._alive()
            # A process restarted under its old name: what its previous life held is let go now,
            # not never (its heartbeat key is back, so no other process would reap it).
            await self._release(self.name, "this process's previous life")
        except Exception as exc:  # noqa: BLE001 - one line for the installer
            raise Unreachable(f"cannot reach Redis at {self.settings.redis_url}: {exc}") from None
        self._pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        await self._pubsub.subscribe(self._channel, self._events)
        loop = asyncio.get_running_loop()
        self._polls = [loop.create_task(self._heartbeat(), name="cluster-heartbeat"),
                       loop.create_task(self.timers.poll(local.timer_due, self._spawn, self._stopping),
                                        name="cluster-timers")]
        self._tasks = [loop.create_task(self._listen(), name="cluster-listen"),
                       loop.create_task(self._publish_queued(), name="cluster-publish"), *self._polls]
        log.info("in the cluster as '%s'", self.name)

    async def close(self) -> None:
        """Leave the cluster: what is queued is published first; presence was left by each
        connection as it closed."""
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._outbox.join(), 5)
        # The loops that poll stop between two commands; the rest are cancelled.
        self._stopping.set()
        if self._polls:
            await asyncio.wait(self._polls, timeout=max(2.0, 2 * self.settings.heartbeat_s))
        for task in [*self._tasks, *self._handlers]:
            task.cancel()
        await asyncio.wait([*self._tasks, *self._handlers], timeout=5.0) if self._tasks or self._handlers else None
        with contextlib.suppress(Exception):
            await self.redis.srem(f"{self.prefix}procs", self.name)
            await self.redis.delete(f"{self.prefix}proc:{self.name}", f"{self.prefix}devices:{self.name}")
        with contextlib.suppress(Exception):
            await self._pubsub.aclose()
        await self.redis.aclose()
        await self._publisher.aclose()

    def lease(self, job: str) -> RedisLease:
        return RedisLease(self, job)

    def health(self) -> tuple[str | None, dict[str, Any]]:
        return (None if self.ok else "cannot reach Redis",
                {"cluster": {"process": self.name, "redis": {"ok": self.ok, "error": self.error}}})

    async def _alive(self) -> None:
        """Say this process is alive. If Redis had forgotten it (Redis restarted empty, or this
        process was silent so long the others took it for dead), its devices join again."""
        ms = int(self.settings.dead_after_s * 1000)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.set(f"{self.prefix}proc:{self.name}", str(time.time()), px=ms, get=True)
            pipe.sadd(f"{self.prefix}procs", self.name)
            known, _ = await pipe.execute()
        if known is None and self._tasks:
            devices = self.local.local_devices()
            log.warning("Redis had forgotten this process: %d device(s) join again", len(devices))
            for device in devices:
                await self.presence.join(device)

    async def _heartbeat(self) -> None:
        while not self._stopping.is_set():
            try:
                await self._alive()
                await self._reap()
                await self._leave_again()
                if not self.ok:
                    log.warning("Redis answers again")
                self.ok, self.error = True, None
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - said in /healthz, tried again
                if self.ok:
                    log.error("Redis does not answer: %s", exc)
                self.ok, self.error = False, str(exc) or type(exc).__name__
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.settings.heartbeat_s)

    async def _reap(self) -> None:
        """A process whose heartbeat stopped (killed, its machine gone) is let go by one
        process: the one that takes the reaping key."""
        p = self.prefix
        for found in await self.redis.smembers(f"{p}procs"):
            other = str(found)
            if other == self.name or await self.redis.exists(f"{p}proc:{other}"):
                continue
            if await self.redis.set(f"{p}reaping:{other}", self.name, nx=True, ex=60):
                await self._release(other, f"process '{other}', which stopped answering,")
                await self.redis.srem(f"{p}procs", other)

    async def _leave_again(self) -> None:
        """The devices whose leave failed are let go now, their calls given the grace a
        disconnected device gets, as a dead process's are; one that came back here stays."""
        for device in list(self.presence.unreleased):
            if self.local.is_local(device):
                self.presence.unreleased.discard(device)
                continue
            await self.presence.leave(device)
            log.info("%s/%s, which left while Redis did not answer, is let go", device.user_id, device.device_id)
            await self.local.device_gone(device)

    async def _release(self, process: str, whose: str) -> None:
        """Its devices are no longer connected anywhere: off presence, and their calls get the
        grace a disconnected device gets."""
        devices = await self.presence.held_by(process)
        if devices:
            log.warning("%s had %d device(s): they are gone", whose, len(devices))
        for device in devices:
            await self.presence.release(device, process)
            await self.local.device_gone(device)
        await self.redis.delete(f"{self.prefix}devices:{process}")

    # -- the backplane: messages between processes -----------------------------------------
    # (A step of a call sends its messages itself, in the script that writes it.)

    def kick(self, device: DeviceRef, process: str, code: int, reason: str) -> None:
        self._publish(f"{self.prefix}proc:{process}", {"op": "kick", "to": device_key(device), "code": code,
                                                       "reason": reason})

    async def ask(self, device: DeviceRef, kind: str, timeout_s: float, body: dict[str, Any]) -> dict[str, Any]:
        place = await self.presence.where(device)
        if place is None:
            raise LookupError(f"{device.user_id}/{device.device_id} is not connected")
        rid = secrets.token_hex(8)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._asks[rid] = future
        self._publish(f"{self.prefix}proc:{place}", {"op": "ask", "to": device_key(device), "rid": rid,
                                                     "from": self.name, "kind": kind, "timeout_s": timeout_s,
                                                     "body": body})
        try:
            return await asyncio.wait_for(future, timeout_s + 1.0)
        finally:
            self._asks.pop(rid, None)

    def broadcast(self, event: dict[str, Any]) -> None:
        self._publish(self._events, {"op": "event", "event": event})

    def _publish(self, channel: str, payload: dict[str, Any]) -> None:
        self._outbox.put_nowait((channel, json.dumps(payload)))

    async def _publish_queued(self) -> None:
        while True:
            channel, text = await self._outbox.get()
            batch = [(channel, text)]
            while not self._outbox.empty():
                batch.append(self._outbox.get_nowait())
            try:
                async with self._publisher.pipeline(transaction=False) as pipe:
                    for channel, text in batch:
                        pipe.publish(channel, text)
                    await pipe.execute()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - these messages are lost; the parties' clocks recover
                log.error("could not publish %d message(s) to other processes: %s", len(batch), exc)
            finally:
                for _ in batch:
                    self._outbox.task_done()

    async def _listen(self) -> None:
        while True:
            try:
                async for message in self._pubsub.listen():
                    if message.get("type") == "message":
                        self._received(json.loads(message["data"]))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - Redis went away: subscribe again when it is back
                log.error("lost the cluster's channel: %s", exc)
                await asyncio.sleep(self.settings.heartbeat_s)
                with contextlib.suppress(Exception):
                    await self._pubsub.subscribe(self._channel, self._events)

    def _received(self, data: dict[str, Any]) -> None:
        op = data.get("op")
        if op == "send":
            call_id = data["message"].get("call_id")
            if "call" in data and isinstance(call_id, str):
                self.calls.learn(call_id, data["call"])
            self.local.deliver_local(device_of(data["to"]), data["message"])
        elif op == "kick":
            self.local.kick_local(device_of(data["to"]), int(data["code"]), str(data["reason"]))
        elif op == "ask":
            self._spawn(self._answer(data))
        elif op == "answer":
            future = self._asks.get(data["rid"])
            if future is not None and not future.done():
                future.set_result(data["reply"])
        elif op == "event":
            self.local.broadcast_received(data["event"])

    async def _answer(self, data: dict[str, Any]) -> None:
        try:
            reply = await self.local.ask_local(device_of(data["to"]), data["kind"], float(data["timeout_s"]),
                                               data["body"])
        except TimeoutError:
            return  # the asker's own deadline says so
        except Exception as exc:  # noqa: BLE001 - the device left meanwhile
            reply = {"type": "error", "code": "conflict", "message": f"not answered: {exc or type(exc).__name__}"}
        self._publish(f"{self.prefix}proc:{data['from']}", {"op": "answer", "rid": data["rid"], "reply": reply})

    def _spawn(self, work: Any) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._handlers.add(task)
        task.add_done_callback(self._handlers.discard)
