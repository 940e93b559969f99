"""The interfaces of `state.py` kept in Redis, so that several server processes see one
picture (`cluster.py` is the process's life in the cluster around them).

- presence: `presence:{user}` maps each connected device to the process it is connected to,
  and `devices:{process}` lists a process's devices, so its death or its restart under the
  same name releases them;
- calls: `call:{id}` is the whole `ServerCall` as JSON. An event is applied by whichever
  process received it, and written back by one script only if the call is still what that
  process read (compare and set): the first `accept` to commit wins, and a second, replayed
  on the new state, gets `conflict`. What a process last read or wrote of a call is kept, so
  the usual event costs one round trip;
- timers: one sorted set, which every process polls; a due timer is taken by the process
  whose ZREM removed it;
- each step of a call is one script, one round trip: the call written (compare and set),
  its timers written or dropped, and its messages to devices on other processes published
  to the process each is connected to (looked up in the script), with the call as written;
- the sign-in throttle: one sorted set of failures per key for the whole cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

from intercom_protocol.calls import DeviceRef, Send, ServerCall

from .state import CALL_TIMERS, RECENT_CALLS_S, Applied, Event, device_key, device_of

log = logging.getLogger("intercom.server.cluster")

#: HDEL a device's presence only if it is still this process's (it may have moved already).
LEAVE = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  return redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
"""

#: Sends each message of a call's step to the process its device is connected to, unless that
#: is this process or none: KEYS[k...] are the devices' presence hashes; ARGV[a] is this
#: process, ARGV[a + 1] the channels' prefix, then a (device id, message) pair per key.
_ROUTE = """
local function route(k, a)
  for j = k, #KEYS do
    local n = a + 2 + 2 * (j - k)
    local place = redis.call('HGET', KEYS[j], ARGV[n])
    if place and place ~= ARGV[a] then redis.call('PUBLISH', ARGV[a + 1] .. place, ARGV[n + 1]) end
  end
end
"""

#: A new call: KEYS[1] = ARGV[1] for ARGV[2] s, in the live set (KEYS[2]) if ARGV[3] is 1,
#: in the indexes of its ARGV[5] users (KEYS[4...]), with its ARGV[6] timers (ARGV[7...]:
#: name, when) in KEYS[3]; then its first messages are routed.
_ADD = _ROUTE + """
local users, timers = tonumber(ARGV[5]), tonumber(ARGV[6])
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
if ARGV[3] == '1' then redis.call('SADD', KEYS[2], ARGV[4]) end
for i = 4, 3 + users do redis.call('SADD', KEYS[i], ARGV[4]) end
for i = 7, 6 + 2 * timers, 2 do redis.call('ZADD', KEYS[3], ARGV[i + 1], ARGV[i]) end
route(4 + users, 7 + 2 * timers)
return 1
"""

#: A change, written only if the call is still what the writer read: {1} written, {2, now}
#: changed meanwhile (replay on `now`), {0} gone. A call that ended (ARGV[4]) leaves the live
#: set (KEYS[2]), and its ARGV[6] timers leave KEYS[3]; then the change's messages are routed.
_SWAP = _ROUTE + """
local now = redis.call('GET', KEYS[1])
if not now then return {0} end
if now ~= ARGV[1] then return {2, now} end
local timers = tonumber(ARGV[6])
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
if ARGV[4] == '1' then
  redis.call('SREM', KEYS[2], ARGV[5])
  for i = 7, 6 + timers do redis.call('ZREM', KEYS[3], ARGV[i]) end
end
route(4, 7 + timers)
return {1}
"""

#: Calls whose last known JSON a process keeps; a stale one costs one more round trip.
_KEPT_CALLS = 4096


class RedisPresence:
    def __init__(self, redis: Any, prefix: str, name: str) -> None:
        self._redis, self._p, self.name = redis, prefix, name
        self._leave = redis.register_script(LEAVE)
        #: Devices gone from this process whose leave Redis did not take (Redis away, or all
        #: its connections busy for longer than a request waits, as when thousands of devices
        #: leave at once): left again at the next heartbeat, or else a dial would count them.
        self.unreleased: set[DeviceRef] = set()

    async def join(self, device: DeviceRef) -> str | None:
        p = self._p
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hget(f"{p}presence:{device.user_id}", device.device_id)
            pipe.hset(f"{p}presence:{device.user_id}", device.device_id, self.name)
            pipe.sadd(f"{p}devices:{self.name}", device_key(device))
            before, _, _ = await pipe.execute()
        self.unreleased.discard(device)
        return before if before and before != self.name else None

    async def leave(self, device: DeviceRef) -> None:
        try:
            await self.release(device, self.name)
            await self._redis.srem(f"{self._p}devices:{self.name}", device_key(device))
        except Exception:
            self.unreleased.add(device)
            raise
        self.unreleased.discard(device)

    async def release(self, device: DeviceRef, process: str) -> None:
        """Take the device off presence if `process` still has it."""
        await self._leave(keys=[f"{self._p}presence:{device.user_id}"], args=[device.device_id, process])

    async def held_by(self, process: str) -> list[DeviceRef]:
        return [device_of(str(d)) for d in await self._redis.smembers(f"{self._p}devices:{process}")]

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


class RedisCalls:
    def __init__(self, redis: Any, prefix: str, name: str, live_ttl_s: float) -> None:
        self._redis, self._p, self._name, self._live_ttl_s = redis, prefix, name, live_ttl_s
        #: Whether a device is connected to this process (set by the cluster at start): its
        #: messages are delivered here, not routed.
        self.here: Callable[[DeviceRef], bool] = lambda device: False
        self._add = redis.register_script(_ADD)
        self._swap = redis.register_script(_SWAP)
        self._timers = f"{prefix}timers"
        #: call id -> the JSON this process last read or wrote, newest last.
        self._known: OrderedDict[str, str] = OrderedDict()

    def _key(self, call_id: str) -> str:
        return f"{self._p}call:{call_id}"

    def _keep(self, call_id: str, raw: str) -> None:
        self._known[call_id] = raw
        self._known.move_to_end(call_id)
        while len(self._known) > _KEPT_CALLS:
            self._known.popitem(last=False)

    async def add(self, call: ServerCall, timers: dict[str, float] | None = None, sends: Sequence[Send] = ()) -> None:
        raw = json.dumps(call.to_json())
        ttl = RECENT_CALLS_S if call.ended else self._live_ttl_s
        users = [f"{self._p}calls_of:{user}" for user in dict.fromkeys([call.caller.user_id, *call.callees])]
        due = [x for kind, at in (timers or {}).items() for x in (f"{kind}:{call.call_id}", at)]
        keys, args = self._routes(sends, call.call_id, raw)
        await self._add(keys=[self._key(call.call_id), f"{self._p}live", self._timers, *users, *keys],
                        args=[raw, int(ttl) + 1, "0" if call.ended else "1", call.call_id, len(users),
                              len(due) // 2, *due, *args])
        self._keep(call.call_id, raw)

    def _routes(self, sends: Sequence[Send], call_id: str, raw: str) -> tuple[list[str], list[str]]:
        """The keys and arguments of `_ROUTE` for a step's sends to devices not connected
        here. The call as written (`raw`) goes along with its messages: the other process's
        next change of it starts there, and costs it one round trip."""
        keys: list[str] = []
        args = [self._name, f"{self._p}proc:"]
        for send in sends:
            if self.here(send.to):
                continue
            about = send.message.get("call_id") == call_id
            keys.append(f"{self._p}presence:{send.to.user_id}")
            args += [send.to.device_id, json.dumps({"op": "send", "to": device_key(send.to), "message": send.message,
                                                    **({"call": raw} if about else {})})]
        return keys, args

    async def get(self, call_id: str) -> ServerCall | None:
        raw = await self._redis.get(self._key(call_id))
        if raw is None:
            self._known.pop(call_id, None)
            return None
        self._keep(call_id, raw)
        return ServerCall.from_json(json.loads(raw))

    async def peek(self, call_id: str) -> ServerCall | None:
        raw = self._known.get(call_id)
        return ServerCall.from_json(json.loads(raw)) if raw is not None else await self.get(call_id)

    def learn(self, call_id: str, raw: str) -> None:
        """The call as another process wrote it (sent along with a message about it): the
        next change here starts from it, and costs one round trip if it is still current."""
        self._keep(call_id, raw)

    async def change(self, call_id: str, event: Event) -> Applied | None:
        raw = self._known.get(call_id) or await self._redis.get(self._key(call_id))
        timers = [f"{kind}:{call_id}" for kind in CALL_TIMERS]
        while raw is not None:
            call = ServerCall.from_json(json.loads(raw))
            was_live = not call.ended
            sends = event(call)  # CallError passes through: nothing written
            ended = was_live and call.ended
            after = json.dumps(call.to_json())
            ttl = RECENT_CALLS_S if call.ended else self._live_ttl_s
            keys, args = self._routes(sends, call_id, after)
            result = await self._swap(keys=[self._key(call_id), f"{self._p}live", self._timers, *keys],
                                      args=[raw, after, int(ttl) + 1, "1" if ended else "0", call_id, len(timers),
                                            *timers, *args])
            if result[0] == 1:
                self._keep(call_id, after)
                return Applied(call, sends, ended)
            raw = result[1] if result[0] == 2 else None  # changed meanwhile: replayed on what it is now
        self._known.pop(call_id, None)
        return None

    async def calls_of(self, user_ids: Iterable[str]) -> list[ServerCall]:
        p = self._p
        users = list(dict.fromkeys(user_ids))
        async with self._redis.pipeline(transaction=False) as pipe:
            for user in users:
                pipe.smembers(f"{p}calls_of:{user}")
            found = await pipe.execute()
        ids = sorted({c for group in found for c in group})
        if not ids:
            return []
        raws = await self._redis.mget([self._key(c) for c in ids])
        gone = [c for c, raw in zip(ids, raws, strict=True) if raw is None]
        if gone:  # expired: the index forgets them
            async with self._redis.pipeline(transaction=False) as pipe:
                for user in users:
                    pipe.srem(f"{p}calls_of:{user}", *gone)
                await pipe.execute()
        calls = [ServerCall.from_json(json.loads(raw)) for raw in raws if raw is not None]
        return sorted(calls, key=lambda c: c.created_at)

    async def live(self) -> list[ServerCall]:
        ids = sorted(await self._redis.smembers(f"{self._p}live"))
        raws = await self._redis.mget([self._key(c) for c in ids]) if ids else []
        calls = [ServerCall.from_json(json.loads(raw)) for raw in raws if raw is not None]
        return [c for c in sorted(calls, key=lambda c: c.created_at) if not c.ended]

    async def live_count(self) -> int:
        return int(await self._redis.scard(f"{self._p}live"))


class RedisTimers:
    def __init__(self, redis: Any, prefix: str, poll_s: float) -> None:
        self._redis, self._key, self._poll_s = redis, f"{prefix}timers", poll_s

    async def schedule(self, due: dict[str, float]) -> None:
        await self._redis.zadd(self._key, due)

    async def cancel(self, *keys: str) -> None:
        if keys:
            await self._redis.zrem(self._key, *keys)

    async def poll(self, due: Callable[[str], Awaitable[None]], spawn: Callable[[Awaitable[None]], None],
                   stopping: asyncio.Event) -> None:
        """Until `stopping`: each due timer, taken by this process if its ZREM removed it, by no
        other. It stops between two polls, never in the middle of a command (a command
        cancelled half-way could leave its connection waiting)."""
        while not stopping.is_set():
            try:
                for found in await self._redis.zrangebyscore(self._key, "-inf", time.time(), start=0, num=200):
                    if await self._redis.zrem(self._key, str(found)):
                        spawn(due(str(found)))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - Redis away: the heartbeat says so; tried again
                log.debug("polling the timers: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), self._poll_s)


class RedisFailures:
    def __init__(self, redis: Any, prefix: str) -> None:
        self._redis, self._p = redis, prefix

    async def blocked_for(self, key: str, limit: int, window_s: float) -> float:
        name, now = f"{self._p}fail:{key}", time.time()
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zremrangebyscore(name, "-inf", now - window_s)
            pipe.zcard(name)
            pipe.zrange(name, 0, 0, withscores=True)
            _, count, oldest = await pipe.execute()
        if int(count) < limit:
            return 0.0
        first = float(oldest[0][1]) if oldest else now
        return max(0.0, first + window_s - now)

    async def fail(self, key: str, limit: int, window_s: float) -> None:
        name, now = f"{self._p}fail:{key}", time.time()
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zadd(name, {f"{now}:{secrets.token_hex(4)}": now})
            pipe.expire(name, int(window_s) + 1)
            await pipe.execute()
