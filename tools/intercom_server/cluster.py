"""Several server processes as one, through Redis: any device on any process.

What one process keeps in memory (who is connected, the live calls, their timers) is kept in
Redis instead, so that every process sees the same picture and none holds anything the others
need when it stops:

- presence: `presence:{user}` maps each connected device to the process it is connected to;
  a message for a device on another process is published on that process's channel, through
  one connection, so messages keep the order they were made in;
- calls: `call:{id}` is the whole `ServerCall`; each event is applied by whichever process
  received it, as a transaction (WATCH/MULTI): the first `accept` to commit wins, and a
  second, replayed on the new state, gets `conflict`, whatever process either arrived at;
- timers (ring timeout, maximum duration, a device's grace after it disconnected): one sorted
  set, which every process polls; a due timer is taken by the process whose ZREM removed it;
- the sign-in throttle: one counter per address and per user for the whole cluster.

Every process says it is alive every second (`proc:{name}`, a key that expires). A process
that stops on SIGTERM closes its connections (1012, "service restart"), whose devices come
back through the load balancer to another process within their grace; one killed with
SIGKILL is noticed by the others when its key expires: its devices are taken off presence
and their calls given the grace a disconnected device gets.

The hub calls this module and is called back (`ClusterEvents`); nothing here knows the
protocol beyond `ServerCall` and `Send`.
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
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from intercom_protocol.calls import CallError, DeviceRef, Send, ServerCall

log = logging.getLogger("intercom.server.cluster")

#: Ended calls stay this long, so a request crossing the end learns why (`conflict`) and a
#: resident may still open the door.
RECENT_S = 120.0

#: HDEL a device's presence only if it is still this process's (it may have moved already).
_LEAVE = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  return redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
"""


@dataclass
class ClusterSettings:
    redis_url: str
    #: This process's name in the cluster; by default its host name and process id.
    name: str = ""
    #: How often a process says it is alive; it is taken for dead after `dead_after_s` of silence.
    heartbeat_s: float = 1.0
    dead_after_s: float = 4.0
    #: How often the timers are polled: a ring timeout fires this much late at most.
    timer_poll_s: float = 0.05
    #: Keys are prefixed, so that one Redis may serve several clusters (or tests) apart.
    prefix: str = "intercom:"


class ClusterEvents(Protocol):
    """What the cluster tells the hub."""

    def deliver_local(self, device: DeviceRef, message: dict[str, Any]) -> None: ...

    def kick_local(self, device: DeviceRef, code: int, reason: str) -> None: ...

    async def ask_local(self, device: DeviceRef, kind: str, timeout_s: float, body: dict[str, Any]) -> dict[str, Any]:
        ...

    async def timer_due(self, key: str) -> None: ...

    def local_devices(self) -> list[DeviceRef]: ...

    async def device_gone(self, device: DeviceRef) -> None: ...


class Unreachable(Exception):
    """Redis does not answer."""


def device_of(key: str) -> DeviceRef:
    """The device a `device_key` names."""
    user, _, device = key.partition("\x1f")
    return DeviceRef(user, device)


def device_key(device: DeviceRef) -> str:
    """A device as one string (ids cannot hold the separator): in Redis sets, messages and timers."""
    return f"{device.user_id}\x1f{device.device_id}"


class Cluster:
    def __init__(self, settings: ClusterSettings, events: ClusterEvents) -> None:
        import redis.asyncio as aioredis  # only a cluster needs it

        self.settings = settings
        self.name = settings.name or f"{socket.gethostname()}-{os.getpid()}"
        self.events = events
        p = settings.prefix
        self._p = p
        self._redis = aioredis.from_url(settings.redis_url, decode_responses=True, socket_timeout=5,
                                        socket_connect_timeout=5, health_check_interval=10)
        #: Publishing goes through one connection of its own, in order.
        self._publisher = aioredis.from_url(settings.redis_url, decode_responses=True, socket_timeout=5,
                                            socket_connect_timeout=5, max_connections=1)
        self._outbox: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        self._channel = f"{p}proc:{self.name}"
        self._leave = self._redis.register_script(_LEAVE)
        self._tasks: list[asyncio.Task[None]] = []
        self._asks: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._handlers: set[asyncio.Task[Any]] = set()
        #: Whether Redis answered the last heartbeat (and why not), for /healthz.
        self.ok = True
        self.error: str | None = None

    # -- life ------------------------------------------------------------------------------

    async def start(self) -> None:
        try:
            await self._alive()
        except Exception as exc:  # noqa: BLE001 - one line for the installer
            raise Unreachable(f"cannot reach Redis at {self.settings.redis_url}: {exc}") from None
        self._pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        await self._pubsub.subscribe(self._channel)
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._listen(), name="cluster-listen"),
                       loop.create_task(self._publish_queued(), name="cluster-publish"),
                       loop.create_task(self._heartbeat(), name="cluster-heartbeat"),
                       loop.create_task(self._poll_timers(), name="cluster-timers")]
        log.info("in the cluster as '%s'", self.name)

    async def close(self) -> None:
        """Leave the cluster: what is queued is published first; presence was left by each
        connection as it closed."""
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._outbox.join(), 5)
        for task in [*self._tasks, *self._handlers]:
            task.cancel()
        await asyncio.gather(*self._tasks, *self._handlers, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self._redis.srem(f"{self._p}procs", self.name)
            await self._redis.delete(f"{self._p}proc:{self.name}", f"{self._p}devices:{self.name}")
        with contextlib.suppress(Exception):
            await self._pubsub.aclose()
        await self._redis.aclose()
        await self._publisher.aclose()

    async def _alive(self) -> None:
        """Say this process is alive. If Redis had forgotten it (Redis restarted empty, or this
        process was silent so long the others took it for dead), its devices join again."""
        ms = int(self.settings.dead_after_s * 1000)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.set(f"{self._p}proc:{self.name}", str(time.time()), px=ms, get=True)
            pipe.sadd(f"{self._p}procs", self.name)
            known, _ = await pipe.execute()
        if known is None and self._tasks:
            devices = self.events.local_devices()
            log.warning("Redis had forgotten this process: %d device(s) join again", len(devices))
            for device in devices:
                await self.join(device)

    async def _heartbeat(self) -> None:
        while True:
            try:
                await self._alive()
                await self._reap()
                if not self.ok:
                    log.warning("Redis answers again")
                self.ok, self.error = True, None
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - said in /healthz, tried again
                if self.ok:
                    log.error("Redis does not answer: %s", exc)
                self.ok, self.error = False, str(exc) or type(exc).__name__
            await asyncio.sleep(self.settings.heartbeat_s)

    async def _reap(self) -> None:
        """A process whose heartbeat stopped (killed, its machine gone): its devices are no
        longer connected anywhere, and their calls get the grace a disconnected device gets.
        One process does it: the one that takes the reaping key."""
        p = self._p
        for found in await self._redis.smembers(f"{p}procs"):
            other = str(found)
            if other == self.name or await self._redis.exists(f"{p}proc:{other}"):
                continue
            if not await self._redis.set(f"{p}reaping:{other}", self.name, nx=True, ex=60):
                continue
            devices = [device_of(str(d)) for d in await self._redis.smembers(f"{p}devices:{other}")]
            log.warning("process '%s' stopped answering: %d device(s) it had are gone", other, len(devices))
            for device in devices:
                await self._leave(keys=[f"{p}presence:{device.user_id}"], args=[device.device_id, other])
                await self.events.device_gone(device)
            await self._redis.delete(f"{p}devices:{other}")
            await self._redis.srem(f"{p}procs", other)

    # -- presence --------------------------------------------------------------------------

    async def join(self, device: DeviceRef) -> str | None:
        """This device is connected here now; returns the process it was connected to before,
        if another (its old connection there is closed as replaced)."""
        p = self._p
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hget(f"{p}presence:{device.user_id}", device.device_id)
            pipe.hset(f"{p}presence:{device.user_id}", device.device_id, self.name)
            pipe.sadd(f"{p}devices:{self.name}", device_key(device))
            before, _, _ = await pipe.execute()
        return before if before and before != self.name else None

    async def leave(self, device: DeviceRef) -> None:
        p = self._p
        await self._leave(keys=[f"{p}presence:{device.user_id}"], args=[device.device_id, self.name])
        await self._redis.srem(f"{p}devices:{self.name}", device_key(device))

    async def devices_of(self, user_ids: Iterable[str]) -> list[DeviceRef]:
        users = list(dict.fromkeys(user_ids))
        if not users:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for user in users:
                pipe.hkeys(f"{self._p}presence:{user}")
            found = await pipe.execute()
        return [DeviceRef(user, device) for user, devices in zip(users, found, strict=True) for device in devices]

    async def where(self, device: DeviceRef) -> str | None:
        found = await self._redis.hget(f"{self._p}presence:{device.user_id}", device.device_id)
        return str(found) if found else None

    # -- messages between processes ------------------------------------------------------

    async def send(self, sends: list[Send], local: Callable[[DeviceRef], bool]) -> None:
        """Deliver what is not for a device of this process (`local` delivers those)."""
        remote = [s for s in sends if not local(s.to)]
        if not remote:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for send in remote:
                pipe.hget(f"{self._p}presence:{send.to.user_id}", send.to.device_id)
            places = await pipe.execute()
        for send, place in zip(remote, places, strict=True):
            if place and place != self.name:
                self._publish(place, {"op": "send", "to": device_key(send.to), "message": send.message})

    def kick(self, device: DeviceRef, process: str, code: int, reason: str) -> None:
        self._publish(process, {"op": "kick", "to": device_key(device), "code": code, "reason": reason})

    async def ask(self, device: DeviceRef, kind: str, timeout_s: float, body: dict[str, Any]) -> dict[str, Any]:
        """A request to a device on another process (the door, asked to open); its reply, or
        TimeoutError, or LookupError if the device is not connected anywhere."""
        place = await self.where(device)
        if place is None:
            raise LookupError(f"{device.user_id}/{device.device_id} is not connected")
        rid = secrets.token_hex(8)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._asks[rid] = future
        self._publish(place, {"op": "ask", "to": device_key(device), "rid": rid, "from": self.name, "kind": kind,
                              "timeout_s": timeout_s, "body": body})
        try:
            return await asyncio.wait_for(future, timeout_s + 1.0)
        finally:
            self._asks.pop(rid, None)

    def _publish(self, process: str, payload: dict[str, Any]) -> None:
        self._outbox.put_nowait((f"{self._p}proc:{process}", json.dumps(payload)))

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
                    await self._pubsub.subscribe(self._channel)

    def _received(self, data: dict[str, Any]) -> None:
        op = data.get("op")
        if op == "send":
            self.events.deliver_local(device_of(data["to"]), data["message"])
        elif op == "kick":
            self.events.kick_local(device_of(data["to"]), int(data["code"]), str(data["reason"]))
        elif op == "ask":
            self._spawn(self._answer(data))
        elif op == "answer":
            future = self._asks.get(data["rid"])
            if future is not None and not future.done():
                future.set_result(data["reply"])

    async def _answer(self, data: dict[str, Any]) -> None:
        try:
            reply = await self.events.ask_local(device_of(data["to"]), data["kind"], float(data["timeout_s"]), data["body"])
        except TimeoutError:
            return  # the asker's own deadline says so
        except Exception as exc:  # noqa: BLE001 - the device left meanwhile
            reply = {"type": "error", "code": "conflict", "message": f"not answered: {exc or type(exc).__name__}"}
        self._publish(data["from"], {"op": "answer", "rid": data["rid"], "reply": reply})

    def _spawn(self, work: Any) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._handlers.add(task)
        task.add_done_callback(self._handlers.discard)

    # -- calls -----------------------------------------------------------------------------

    def _call_key(self, call_id: str) -> str:
        return f"{self._p}call:{call_id}"

    async def add_call(self, call: ServerCall, ttl_s: float) -> None:
        p = self._p
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(self._call_key(call.call_id), json.dumps(call.to_json()), ex=int(ttl_s) + 1)
            for user in {call.caller.user_id, *call.callees}:
                pipe.sadd(f"{p}calls_of:{user}", call.call_id)
            pipe.sadd(f"{p}live", call.call_id)
            await pipe.execute()

    async def get_call(self, call_id: str) -> ServerCall | None:
        raw = await self._redis.get(self._call_key(call_id))
        return None if raw is None else ServerCall.from_json(json.loads(raw))

    async def change(self, call_id: str, event: Callable[[ServerCall], list[Send]],
                     ttl_s: float) -> tuple[ServerCall, list[Send], bool] | None:
        """Apply `event` to the call as one transaction: replayed on the new state if another
        process changed the call meanwhile. Returns (the call after, what to send, whether this
        event ended it), or None for no such call; `CallError` from the event passes through."""
        import redis.exceptions

        key = self._call_key(call_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(key)
                    raw = await pipe.get(key)
                    if raw is None:
                        await pipe.reset()
                        return None
                    call = ServerCall.from_json(json.loads(raw))
                    was_live = not call.ended
                    try:
                        sends = event(call)
                    except CallError:
                        await pipe.reset()
                        raise
                    ended = was_live and call.ended
                    pipe.multi()
                    pipe.set(key, json.dumps(call.to_json()), ex=int(RECENT_S if call.ended else ttl_s) + 1)
                    if ended:
                        pipe.srem(f"{self._p}live", call_id)
                    await pipe.execute()
                    return call, sends, ended
                except redis.exceptions.WatchError:
                    continue

    async def calls_of(self, user_ids: Iterable[str]) -> list[ServerCall]:
        """The calls these users are parties of, live or ended lately (oldest first)."""
        p = self._p
        users = list(dict.fromkeys(user_ids))
        async with self._redis.pipeline(transaction=False) as pipe:
            for user in users:
                pipe.smembers(f"{p}calls_of:{user}")
            found = await pipe.execute()
        ids = sorted({c for group in found for c in group})
        if not ids:
            return []
        raws = await self._redis.mget([self._call_key(c) for c in ids])
        gone = [c for c, raw in zip(ids, raws, strict=True) if raw is None]
        if gone:  # expired: the index forgets them
            async with self._redis.pipeline(transaction=False) as pipe:
                for user in users:
                    pipe.srem(f"{p}calls_of:{user}", *gone)
                await pipe.execute()
        calls = [ServerCall.from_json(json.loads(raw)) for raw in raws if raw is not None]
        return sorted(calls, key=lambda c: c.created_at)

    async def live_count(self) -> int:
        return int(await self._redis.scard(f"{self._p}live"))

    # -- timers ----------------------------------------------------------------------------

    async def schedule(self, key: str, at: float) -> None:
        await self._redis.zadd(f"{self._p}timers", {key: at})

    async def cancel(self, *keys: str) -> None:
        if keys:
            await self._redis.zrem(f"{self._p}timers", *keys)

    async def _poll_timers(self) -> None:
        timers = f"{self._p}timers"
        while True:
            try:
                due = await self._redis.zrangebyscore(timers, "-inf", time.time(), start=0, num=200)
                for found in due:
                    key = str(found)
                    if await self._redis.zrem(timers, key):  # taken by this process, by no other
                        self._spawn(self.events.timer_due(key))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - Redis away: the heartbeat says so; tried again
                log.debug("polling the timers: %s", exc)
            await asyncio.sleep(self.settings.timer_poll_s)

    # -- the sign-in throttle, for the whole cluster ------------------------------------------

    async def failures(self, key: str, window_s: float, now: float) -> int:
        """Failures recorded under `key` within the window."""
        name = f"{self._p}fail:{key}"
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zremrangebyscore(name, "-inf", now - window_s)
            pipe.zcard(name)
            _, count = await pipe.execute()
        return int(count)

    async def oldest_failure(self, key: str) -> float | None:
        found = await self._redis.zrange(f"{self._p}fail:{key}", 0, 0, withscores=True)
        return float(found[0][1]) if found else None

    async def fail(self, key: str, window_s: float, now: float) -> None:
        name = f"{self._p}fail:{key}"
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zadd(name, {f"{now}:{secrets.token_hex(4)}": now})
            pipe.expire(name, int(window_s) + 1)
            await pipe.execute()
