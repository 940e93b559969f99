"""The SIP gateway: how soon a press reaches the house's phones, how soon a phone that
answers hears the door, and what a call costs the gateway per codec.

The world is the tests' (`intercom_sim.sipsite`): kamailio as the registrar, PJSIP phones, the
gateway as `intercom-sip run`, the server and a door as processes. Times compare across
processes because they share the machine's monotonic clock.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from intercom_sim.sipsite import SipSite

from .figures import cpu_times, summary
from .scene import Bell

#: The phones, one per codec: each belongs to its own resident, and both ring at each press.
PHONES = {"g722": "hd", "pcmu": "nb"}


async def run(root: Path, calls: int, call_seconds: float) -> dict[str, Any]:
    site = SipSite(root, phones=list(PHONES.values()))
    await site.start()
    try:
        return await _measure(site, calls, call_seconds)
    finally:
        await site.close()


async def _measure(site: SipSite, calls: int, call_seconds: float) -> dict[str, Any]:
    phones = {}
    for codec, name in PHONES.items():
        await site.house.add_user(name, "resident", name.upper())
        phones[codec] = await site.phone(name, codecs=codec)
    gateway = await site.start_gateway([{"name": name, "resident": name, "dial": name} for name in PHONES.values()])
    await gateway.wait_for_event("registration", state="registered")
    door = await site.house.start_door("door", [{"residents": list(PHONES.values())}])
    bell = Bell(door)
    invite_ms: list[float] = []
    hears_ms: dict[str, list[float]] = {codec: [] for codec in PHONES}
    cpu: dict[str, list[float]] = {codec: [] for codec in PHONES}
    pid = gateway.proc.pid
    try:
        for i in range(calls * len(PHONES)):
            codec = list(PHONES)[i % len(PHONES)]
            phone = phones[codec]
            seen = {c: len(p.events) for c, p in phones.items()}
            lines = len(gateway.lines)
            pressed = await bell.press()
            for c, p in phones.items():
                await p.wait("incoming", after=seen[c])
            for name in PHONES.values():
                sent = await gateway.wait_for_event("invite_sent", device_id=f"sip-{name}", after=lines)
                invite_ms.append((sent["at"] - pressed) * 1000)
            await phone.do("answer")
            answering = await phone.wait("answering", after=seen[codec])
            hearing = await phone.wait("hearing", after=seen[codec])
            hears_ms[codec].append((hearing["at"] - answering["at"]) * 1000)
            before, started = cpu_times(pid).total, time.monotonic()
            await asyncio.sleep(call_seconds)  # the call's length is what is measured
            cpu[codec].append((cpu_times(pid).total - before) / (time.monotonic() - started) * 100)
            await phone.do("hangup")
            await bell.until_idle(timeout_s=20)
            await bell.release()
    finally:
        bell.close()
    return {"calls_per_codec": calls, "call_seconds": call_seconds,
            "press_to_invite_sent_ms": summary(invite_ms),
            "answer_to_phone_hears_door_ms": {codec: summary(v) for codec, v in hears_ms.items()},
            "gateway_cpu_percent_per_call": {codec: summary(v) for codec, v in cpu.items()}}
