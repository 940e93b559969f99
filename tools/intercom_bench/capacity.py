"""The server under load: memory per signed-in idle device, and call set-ups per second.

The server runs as `intercom-server serve`, as installed; the load comes from
`intercom_bench.loadgen` in a process of its own. Accounts are written straight into the
server's database beforehand (provisioning 5,000 devices through the CLI would measure the
CLI), as a building's installer would import them.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from intercom_server.store import Store
from intercom_sim.cluster import Cluster
from intercom_sim.harness import Installation, Process

from .figures import cpu_times, memory_kib
from .scene import installation

#: Calls a second one door/phone pair offers at most: the server allows a connection 20
#: messages a second, and a door sends two per call.
PEAK_PER_PAIR = 8.0
#: Server processes in the cluster the benchmark runs.
CLUSTER = 3
#: Devices per resident account: phones, tablets and laptops of one household member.
DEVICES_PER_RESIDENT = 5


async def _accounts(site: Installation, residents: int, doors: int,
                    database: str | None) -> dict[str, list[list[str]]]:
    store = await Store.open(database or site.data_dir / "intercom.db")
    try:
        accounts: dict[str, list[list[str]]] = {"residents": [], "doors": []}
        for kind, count in (("resident", residents), ("door", doors)):
            for n in range(count):
                user = f"{kind}-{n}"
                await store.users.add_user(user, kind, site.site_id, f"{kind.title()} {n}")
                accounts[f"{kind}s"].append([user, (await store.tokens.issue_token(user))["access_token"]])
    finally:
        await store.close()
    return accounts


async def provision(site: Installation, residents: int, doors: int, database: str | None = None) -> Path:
    accounts = await _accounts(site, residents, doors, database)
    path = site.root / "accounts.json"
    path.write_text(json.dumps(accounts))
    path.chmod(0o600)
    return path


async def _loadgen(site: Installation, *args: str) -> Process:
    process = await Process.start("loadgen", [sys.executable, "-m", "intercom_bench.loadgen", *args,
                                              "--url", site.ws_url, "--accounts", str(site.root / "accounts.json")],
                                  site.logs)
    return process


async def run(root: Path, connections: int, pairs: int, seconds: float, steady_rate: float,
              database: str | None = None, hold_s: float = 20.0, matched_rate: float | None = None) -> dict[str, Any]:
    """With `database` (a PostgreSQL URL) the server keeps its data there, not in SQLite; with
    `connections=0` only the call set-ups are measured."""
    async with installation(root, {"database": database} if database else None) as site:
        assert site.server is not None
        pid = site.server.proc.pid
        residents = max(pairs, -(-connections // DEVICES_PER_RESIDENT))
        await provision(site, residents, pairs, database)
        if not connections:
            return {"setups": await _setups(site, [pid], [site.http_url], site.api_token, pairs, seconds,
                                            steady_rate, matched_rate)}

        # Idle devices: the server's memory before and after they have all signed in.
        baseline = memory_kib(pid)["VmRSS"]
        idle = await _loadgen(site, "idle", "--connections", str(connections))
        ready = await idle.wait_for_event("ready", timeout=300)
        loaded = memory_kib(pid)["VmRSS"]
        idle_cpu = await _idle_cpu([pid], hold_s)
        await idle.stop()
        per_client = (loaded - baseline) / connections
        setups = await _setups(site, [pid], [site.http_url], site.api_token, pairs, seconds, steady_rate,
                               matched_rate)
    return {
        "idle": {"connections": ready["connections"], "signed_in_in_s": ready["seconds"],
                 "server_rss_before_kib": baseline, "server_rss_after_kib": loaded,
                 "per_connection_kib": round(per_client, 2), "idle_cpu_percent": idle_cpu, "held_s": hold_s},
        "setups": setups,
    }


async def run_cluster(root: Path, connections: int, pairs: int, seconds: float, steady_rate: float,
                      size: int = 3, hold_s: float = 20.0, matched_rate: float | None = None) -> dict[str, Any]:
    """The same on `size` processes sharing PostgreSQL and Redis behind HAProxy, all on this
    machine's two cores: memory per idle connection over all the processes, then set-ups, most
    of whose door and phone are on different processes."""
    group = Cluster(root, size)
    try:
        await group.start()
        assert group.database is not None
        site = group.site
        pids = [p.proc.pid for p in group.servers if p is not None]
        residents = max(pairs, -(-connections // DEVICES_PER_RESIDENT))
        await provision(site, residents, pairs, group.database)
        baseline = sum(memory_kib(pid)["VmRSS"] for pid in pids)
        idle = await _loadgen(site, "idle", "--connections", str(connections))
        ready = await idle.wait_for_event("ready", timeout=300)
        loaded = sum(memory_kib(pid)["VmRSS"] for pid in pids)
        idle_cpu = await _idle_cpu(pids, hold_s)
        await idle.stop()
        setups = await _setups(site, pids, [group.url(i) for i in range(size)], group.api_token, pairs, seconds,
                               steady_rate, matched_rate)
    finally:
        await group.close()
    return {
        "processes": size,
        "idle": {"connections": ready["connections"], "signed_in_in_s": ready["seconds"],
                 "servers_rss_before_kib": baseline, "servers_rss_after_kib": loaded,
                 "per_connection_kib": round((loaded - baseline) / connections, 2), "idle_cpu_percent": idle_cpu,
                 "held_s": hold_s},
        "setups": setups,
    }


async def _idle_cpu(pids: list[int], hold_s: float) -> float:
    """The servers' CPU, in % of a core, while the idle devices stay signed in: what their
    heartbeats (a WebSocket ping each way every `heartbeat_s`) and the timers cost."""
    before, started = sum(cpu_times(pid).total for pid in pids), time.monotonic()
    await asyncio.sleep(hold_s)  # the span measured, not a wait for something to happen
    return round(100 * (sum(cpu_times(pid).total for pid in pids) - before) / (time.monotonic() - started), 2)


async def _flushed(urls: list[str], api_token: str) -> None:
    """Until each server has committed the writes queued so far (its /healthz, asked with the
    Api-Token, answers only then)."""
    async with aiohttp.ClientSession() as http:
        async def one(url: str) -> None:
            async with http.get(url + "/healthz", headers={"Api-Token": api_token}) as resp:
                await resp.read()
        await asyncio.gather(*(one(url) for url in urls))


async def _setups(site: Installation, pids: list[int], urls: list[str], api_token: str, pairs: int,
                  seconds: float, steady_rate: float, matched_rate: float | None = None) -> dict[str, dict[str, Any]]:
    """Call set-ups with no idle devices: at a steady rate twice the target, for the latency a
    building sees on a busy evening; then as fast as the pairs may go; then, with
    `matched_rate`, at a rate one process and a cluster both keep up with here, so that their
    CPU per call is compared doing the same work (at the steady rate a cluster sharing two
    cores with its databases is saturated, and the one process is not)."""
    setups: dict[str, dict[str, Any]] = {}
    phases = [("steady", steady_rate / pairs), ("peak", PEAK_PER_PAIR)]
    if matched_rate:
        phases.append(("matched", matched_rate / pairs))
    for phase, per_pair in phases:
        calls = await _loadgen(site, "calls", "--pairs", str(pairs), "--seconds", f"{seconds:g}",
                               "--per-pair", f"{per_pair:g}")
        await calls.wait_for_event("connected", timeout=60)
        server_before = sum(cpu_times(pid).total for pid in pids)
        load_before, started = cpu_times(calls.proc.pid), time.monotonic()
        result = await calls.wait_for_event("result", timeout=seconds + 120)
        # A phase's calls are paid for when their records are written too: a writer that fell
        # behind would otherwise bill the next phase for them.
        load_s, ended = cpu_times(calls.proc.pid).total - load_before.total, time.monotonic()
        await asyncio.wait_for(_flushed(urls, api_token), 120)
        now = time.monotonic()
        elapsed, behind = now - started, now - ended
        server_s = sum(cpu_times(pid).total for pid in pids) - server_before
        await calls.stop()
        setups[phase] = {k: result[k] for k in ("pairs", "seconds", "calls", "offered_per_s", "per_s", "setup_ms",
                                                 "error_count", "errors")}
        setups[phase]["server_cpu_percent"] = round(100 * server_s / elapsed, 1)
        #: What one call (set up, answered, ended) costs the server processes together.
        setups[phase]["server_cpu_ms_per_call"] = round(1000 * server_s / max(1, result["calls"]), 2)
        setups[phase]["loadgen_cpu_percent"] = round(100 * load_s / (ended - started), 1)
        #: How long the servers took, after the last call, to commit what was still queued.
        setups[phase]["writes_behind_s"] = round(behind, 2)
    return setups
