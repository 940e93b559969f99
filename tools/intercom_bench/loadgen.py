"""The server benchmark's load generator: a process of its own, so that its CPU is not the
server's. It speaks protocol v1 over real WebSockets, as doors and phones do.

    python -m intercom_bench.loadgen idle  --url WS --accounts FILE --connections 5000
    python -m intercom_bench.loadgen calls --url WS --accounts FILE --pairs 100 --seconds 30

`accounts` is a JSON file {"residents": [[user, token], ...], "doors": [[user, token], ...]}.
Progress and results are JSON lines on stdout; `idle` holds its connections until SIGTERM,
so the bench can read the server's memory while they are all signed in.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from typing import Any

import aiohttp

from intercom_protocol.messages import REPLY_TYPES
from intercom_protocol.requests import RequestTracker

from .figures import summary


def emit(event: str, **body: Any) -> None:
    print(json.dumps({"event": event, **body}), flush=True)


class Client:
    """One signed-in device: requests matched to replies, events queued by type."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self._requests: RequestTracker[asyncio.Future[dict[str, Any]], None] = RequestTracker("")
        self.events: dict[str, asyncio.Queue[dict[str, Any]]] = {}
        self._reader = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def connect(cls, http: aiohttp.ClientSession, url: str, user: str, token: str, device: str) -> Client:
        ws = await http.ws_connect(url, autoping=True, max_msg_size=4 * 1024 * 1024)
        client = cls(ws)
        reply = await client.request("authenticate", user_id=user, access_token=token, device_id=device)
        if reply["type"] != "ok":
            raise RuntimeError(f"{user} could not sign in: {reply}")
        return client

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(msg.data)
            if data["type"] in REPLY_TYPES:
                fut = self._requests.settle(data).waiter
                if fut is not None:
                    fut.set_result(data)
            else:
                self.events.setdefault(data["type"], asyncio.Queue()).put_nowait(data)

    async def request(self, kind: str, **body: Any) -> dict[str, Any]:
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        await self.ws.send_str(json.dumps(self._requests.start(kind, fut, **body)))
        return await asyncio.wait_for(fut, 10)

    async def next(self, kind: str) -> dict[str, Any]:
        return await asyncio.wait_for(self.events.setdefault(kind, asyncio.Queue()).get(), 10)

    async def close(self) -> None:
        await self.ws.close()
        self._reader.cancel()


async def real_sdp() -> tuple[dict[str, str], dict[str, str]]:
    """An offer and answer as a door and a phone make them (a few KiB each), for realistic frames."""
    from aiortc import RTCPeerConnection

    from intercom.media.peer import rtc_configuration

    door, phone = RTCPeerConnection(rtc_configuration([])), RTCPeerConnection(rtc_configuration([]))
    try:
        door.addTransceiver("video", direction="sendonly")
        door.addTransceiver("audio")
        await door.setLocalDescription(await door.createOffer())
        await phone.setRemoteDescription(door.localDescription)
        await phone.setLocalDescription(await phone.createAnswer())
        return ({"type": "offer", "sdp": door.localDescription.sdp},
                {"type": "answer", "sdp": phone.localDescription.sdp})
    finally:
        await door.close()
        await phone.close()


async def idle(url: str, accounts: dict[str, Any], connections: int, parallel: int = 100) -> None:
    """Sign `connections` devices in (spread over the resident accounts) and hold them."""
    residents = accounts["residents"]
    started = time.monotonic()
    limit = asyncio.Semaphore(parallel)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        async def one(n: int) -> Client:
            user, token = residents[n % len(residents)]
            async with limit:
                return await Client.connect(http, url, user, token, f"phone-{n // len(residents)}")

        clients = await asyncio.gather(*(one(n) for n in range(connections)))
        emit("ready", connections=len(clients), seconds=round(time.monotonic() - started, 1))
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()  # held until the bench has read the server's memory
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)


async def calls(url: str, accounts: dict[str, Any], pairs: int, seconds: float, per_pair_s: float) -> None:
    """Each pair, over and over: the door dials its resident, who accepts; the door hangs up.

    Set-up latency is from sending `dial` to the door receiving `accepted`: every step of a
    real answer except the people. A pair starts its next call when the last one has ended,
    but at most `per_pair_s` calls a second: the server allows one connection 20 messages a
    second, and a door placing calls faster than that would measure the rate limit, not the
    server. So the load is many doors, as in a large building, offering up to
    pairs x per_pair_s calls a second; the rate measured is what the server sustained."""
    offer, answer = await real_sdp()
    interval = 1 / per_pair_s
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        doors = await asyncio.gather(*(Client.connect(http, url, u, t, "door") for u, t in accounts["doors"][:pairs]))
        phones = await asyncio.gather(*(Client.connect(http, url, u, t, "phone")
                                        for u, t in accounts["residents"][:pairs]))
        latencies: list[float] = []
        errors: list[str] = []
        done = 0
        emit("connected", pairs=len(doors))
        start = time.monotonic()
        deadline = start + seconds

        async def pair(n: int, door: Client, phone: Client, callee: str) -> None:
            nonlocal done
            await asyncio.sleep(interval * n / len(doors))  # spread the pairs' first calls over one interval
            while (sent := time.monotonic()) < deadline:
                reply = await door.request("dial", callees=[callee], video=True, offer=offer)
                if reply["type"] != "ok":
                    errors.append(f"dial: {reply.get('code')}")
                    return
                call_id = reply["call_id"]
                incoming = await phone.next("incoming")
                ok = await phone.request("accept", call_id=call_id, answer=answer)
                accepted = await door.next("accepted")
                latencies.append((time.monotonic() - sent) * 1000)
                await door.next("ringing")
                if ok["type"] != "ok" or accepted["call_id"] != call_id or incoming["call_id"] != call_id:
                    errors.append(f"accept: {ok.get('code', 'crossed calls')}")
                    return
                ended = await door.request("end", call_id=call_id)
                if ended["type"] != "ok":
                    errors.append(f"end: {ended.get('code')}")
                    return
                await door.next("ended")
                await phone.next("ended")
                done += 1
                await asyncio.sleep(max(0.0, sent + interval - time.monotonic()))

        await asyncio.gather(*(pair(i, d, p, accounts["residents"][i][0])
                               for i, (d, p) in enumerate(zip(doors, phones, strict=True))))
        elapsed = time.monotonic() - start
        emit("result", pairs=len(doors), seconds=round(elapsed, 2), calls=done, offered_per_s=len(doors) * per_pair_s,
             per_s=round(done / elapsed, 1), setup_ms=summary(latencies), errors=errors[:20], error_count=len(errors))
        await asyncio.gather(*(c.close() for c in [*doors, *phones]), return_exceptions=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m intercom_bench.loadgen", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=("idle", "calls"))
    parser.add_argument("--url", required=True)
    parser.add_argument("--accounts", required=True)
    parser.add_argument("--connections", type=int, default=5000)
    parser.add_argument("--pairs", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--per-pair", type=float, default=8.0, help="calls a second one pair may offer")
    args = parser.parse_args(argv)
    with open(args.accounts) as f:
        accounts = json.load(f)
    if args.mode == "idle":
        asyncio.run(idle(args.url, accounts, args.connections))
    else:
        asyncio.run(calls(args.url, accounts, args.pairs, args.seconds, args.per_pair))
    return 0


if __name__ == "__main__":
    sys.exit(main())
