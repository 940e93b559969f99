"""Faults injected into the real programs: the server killed or frozen while the bell rings and
during a call, the door crashing and coming straight back, the door's link black-holed and
healed. Each test asserts what the visitor and the resident notice: the door is idle again,
the resident's ring or call ends instead of hanging, the history tells the truth, a press the
server never heard is kept and reported, and a call whose media is fine survives.

The server pings every second here (`heartbeat_s: 1`), so it notices a dead link at once;
the door pings at its default until the server has told it otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from intercom_sim.harness import Door, Installation, Process

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]

GROUPS = [{"residents": ["alice"], "timeout_s": 60}]


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Installation]:
    installation = Installation(tmp_path)
    await installation.start_server(grace_s=2, settings={"heartbeat_s": 1})
    try:
        yield installation
    finally:
        await installation.close()


async def no_live_calls(site: Installation) -> None:
    """The server holds no orphan call: every call of the fault has ended there too."""
    status, health = await site.api("GET", "/healthz")
    assert status == 200 and health["live_calls"] == 0, health


async def record(site: Installation, call_id: str) -> dict:
    status, body = await site.api("GET", f"/v1/direct_calls/{call_id}")
    assert status == 200, body
    return body


async def crash_and_restart_server(site: Installation) -> None:
    await site.stop_server(crash=True)  # SIGKILL: nothing is tidied up
    await site.restart_server()


async def ring_reaches(door: Door, alice: Process) -> dict:
    """A press rings alice: the door is free again and the resident is not busy."""
    seen = len(alice.lines)
    await door.ring()
    return await alice.wait_for_event("incoming", after=seen, timeout=30)


async def test_server_killed_while_the_bell_rings(site):
    alice = await site.start_resident("alice", "--answer", "ignore", device_id="phone")
    door = await site.start_door("frontdoor", GROUPS)
    await door.ring()
    incoming = await alice.wait_for_event("incoming")
    await door.wait_status(lambda s: s["state"] == "calling")
    await crash_and_restart_server(site)
    # Both sign in again, learn that the server no longer knows the call, and end it.
    ended = await alice.wait_for_event("ended", call_id=incoming["call_id"], timeout=30)
    assert ended["reason"] == "connection_lost"
    # The ringback stops and the visitor hears that nobody will come (the tone follows the teardown).
    idle = await door.wait_status(lambda s: s["server"]["connected"] and "no_answer" in s["speaker"]["tones_played"],
                                  timeout=30)
    assert idle["state"] == "idle" and idle["last_call"]["end_reason"] == "connection_lost"
    assert idle["speaker"]["tone"] != "ringback"
    assert idle["camera"]["viewers"] == 0
    assert (await record(site, incoming["call_id"]))["end_reason"] == "unknown"
    await no_live_calls(site)
    again = await ring_reaches(door, alice)
    assert again["call_id"] != incoming["call_id"]


async def call_in_progress(site: Installation, settings: dict | None = None) -> tuple[Process, Door, dict]:
    """A visitor rang and alice answered: the video reaches her. `settings` go to the door's YAML."""
    alice = await site.start_resident("alice", "--hangup-after-frames", "0", device_id="phone")
    door = await site.start_door("frontdoor", GROUPS, settings=settings)
    await door.ring()
    answered = await alice.wait_for_event("answered", timeout=30)
    await alice.wait_for_event("first_frame", timeout=30)
    return alice, door, answered


async def test_server_killed_during_a_call(site):
    alice, door, answered = await call_in_progress(site)
    # Stored when it happened: once the history shows the answer, a crash keeps it.
    assert (await record(site, answered["call_id"]))["accepted_by"]["user_id"] == "alice"
    await crash_and_restart_server(site)
    ended = await alice.wait_for_event("ended", call_id=answered["call_id"], timeout=30)
    assert ended["reason"] == "connection_lost" and ended["video_frames"] > 0
    # The door gives its camera and microphone back instead of filming until the call limit.
    idle = await door.wait_status(lambda s: s["state"] == "idle" and s["server"]["connected"], timeout=30)
    assert idle["camera"]["viewers"] == 0 and idle["last_call"]["end_reason"] == "connection_lost"
    stored = await record(site, answered["call_id"])
    assert stored["end_reason"] == "unknown" and stored["accepted_by"]["user_id"] == "alice"
    await no_live_calls(site)
    await ring_reaches(door, alice)


async def test_server_frozen_during_a_call(site):
    """SIGSTOP for longer than the door's heartbeat: the door notices, keeps the call whose
    media goes on directly, and claims it back when the server thaws."""
    alice, door, answered = await call_in_progress(site)
    assert site.server is not None
    server = site.server.proc.pid
    os.kill(server, signal.SIGSTOP)
    try:
        cut_off = await door.wait_status(lambda s: not s["server"]["connected"], timeout=40)
        assert cut_off["state"] == "connected"
    finally:
        os.kill(server, signal.SIGCONT)
    back = await door.wait_status(lambda s: s["server"]["connected"], timeout=40)
    assert back["state"] == "connected" and back["call"]["call_id"] == answered["call_id"]
    await door.ctl("hangup")
    ended = await alice.wait_for_event("ended", call_id=answered["call_id"], timeout=30)
    assert ended["reason"] == "completed" and ended["video_frames"] > 0
    await no_live_calls(site)


async def test_door_crashes_and_systemd_restarts_it_at_once(site):
    alice, door, answered = await call_in_progress(site)
    await door.process.kill()
    await site.restart_door(door)  # the same device id signs in again, holding no call
    await door.wait_status(lambda s: s["server"]["connected"])
    ended = await alice.wait_for_event("ended", call_id=answered["call_id"], timeout=30)
    assert ended["reason"] == "connection_lost"
    assert (await record(site, answered["call_id"]))["end_reason"] == "connection_lost"
    await no_live_calls(site)
    # The next visitor rings the resident instead of being declined as busy.
    await ring_reaches(door, alice)


async def test_a_dead_call_never_holds_the_bell(site):
    """The server crashes during a call, then the resident's phone dies: nobody can tell the
    door. aiortc keeps its peer connection `connected` for ~30 s and then closes it rather than
    failing; the door's own silence clock ends the call, so the next visitor is not ignored:
    kept while the server is away, reported when it is back, and the press after rings."""
    alice, door, answered = await call_in_progress(site)
    await site.stop_server(crash=True)
    await door.wait_status(lambda s: not s["server"]["connected"], timeout=30)
    await site.stop(alice, crash=True)
    # A visitor presses at once, while the door still shows the call: not lost, whenever it lands.
    await door.ring()
    idle = await door.wait_status(lambda s: s["state"] == "idle" and s["missed_presses"] == 1, timeout=40)
    assert idle["last_call"]["call_id"] == answered["call_id"]
    assert idle["last_call"]["end_reason"] == "connection_lost"
    assert idle["camera"]["viewers"] == 0 and idle["server"]["connected"] is False
    await site.restart_server()
    reported = await door.wait_status(lambda s: s["server"]["connected"] and s["missed_reported"] == 1, timeout=40)
    assert reported["missed_presses"] == 0
    status, history = await site.api("GET", "/v1/direct_calls?user_id=alice")
    assert status == 200, history
    assert [c["end_reason"] for c in history["calls"]][:2] == ["dial_failed", "unknown"]
    phone = await site.start_resident("alice", "--answer", "ignore", device_id="phone", create=False)
    await ring_reaches(door, phone)


async def test_a_resident_ends_a_call_whose_door_died_while_the_server_was_away(site):
    """The command-line resident's side of the same rule: the server is gone, then the door
    loses power; the resident's call ends by its own silence clock, not at the call limit."""
    alice, door, answered = await call_in_progress(site)
    await site.stop_server(crash=True)
    await door.process.kill()
    ended = await alice.wait_for_event("ended", call_id=answered["call_id"], timeout=40)
    assert ended["reason"] == "connection_lost" and ended["video_frames"] > 0


async def test_server_frozen_during_a_press(site):
    alice = await site.start_resident("alice", "--answer", "ignore", device_id="phone")
    door = await site.start_door("frontdoor", GROUPS)
    assert site.server is not None
    server = site.server.proc.pid
    os.kill(server, signal.SIGSTOP)
    try:
        await door.ring()
        # The dial gets no answer: the door gives up on its own clock and keeps the press.
        gave_up = await door.wait_status(lambda s: s["missed_presses"] == 1
                                         and "no_answer" in s["speaker"]["tones_played"], timeout=40)
        assert gave_up["calls_placed"] == 0 and gave_up["state"] == "idle"
    finally:
        os.kill(server, signal.SIGCONT)
    # The server wakes up and handles the dial it had queued: the door ends that call (or the
    # server does when the door signs in again without it), so the resident's ring stops.
    incoming = await alice.wait_for_event("incoming", timeout=30)
    ended = await alice.wait_for_event("ended", call_id=incoming["call_id"], timeout=30)
    assert ended["reason"] in ("canceled", "connection_lost")
    reported = await door.wait_status(lambda s: s["missed_reported"] == 1, timeout=40)
    assert reported["missed_presses"] == 0 and reported["state"] == "idle"
    status, history = await site.api("GET", "/v1/direct_calls?user_id=alice")
    reasons = sorted(c["end_reason"] for c in history["calls"])
    assert "dial_failed" in reasons and "completed" not in reasons
    assert all(c["accepted_by"] is None for c in history["calls"])


class LinkProxy:
    """A TCP relay on loopback between the door and the server whose link can be cut without
    closing it: a black hole, as a dead router or a pulled cable upstream leaves it."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.open = True
        self.port = 0
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        while not self.open:  # a black hole answers nothing, not even a refusal
            if await reader.read(65536) == b"":
                return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        self._writers.append(up_writer)
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.get_running_loop().create_task(self._pipe(source, sink))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(65536):
                if self.open:
                    sink.write(data)
                    await sink.drain()
        except ConnectionError:
            pass
        finally:
            sink.close()

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def test_a_black_holed_door_link_keeps_a_call_whose_media_flows(site):
    proxy = LinkProxy(int(site.http_url.rsplit(":", 1)[1]))
    await proxy.start()
    try:
        alice, door, answered = await call_in_progress(site, {"server": {"url": f"ws://127.0.0.1:{proxy.port}/v1/ws"}})
        proxy.open = False
        # The door notices (its pings go unanswered) but keeps the call: the media is direct.
        cut_off = await door.wait_status(lambda s: not s["server"]["connected"], timeout=40)
        assert cut_off["state"] == "connected" and cut_off["call"]["call_id"] == answered["call_id"]
        proxy.open = True
        # Back within the answered call's grace: the door claims the call and the server keeps it.
        back = await door.wait_status(lambda s: s["server"]["connected"], timeout=40)
        assert back["state"] == "connected"
        await door.ctl("hangup")
        ended = await alice.wait_for_event("ended", call_id=answered["call_id"], timeout=30)
        assert ended["reason"] == "completed"
        assert (await record(site, answered["call_id"]))["end_reason"] == "completed"
    finally:
        await proxy.close()


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A small file system of its own (root mounts it, as CI here is), to fill or make read-only."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill(directory: Path) -> Path:
    """Write until the disk is full."""
    filler = directory / "filler"
    # Unbuffered: a write the disk takes only in part leaves nothing behind for close() to
    # fail on (it did, as soon as the free space was not a whole number of chunks).
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 65536)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    return filler


async def test_a_full_disk_never_silences_the_bell_and_loses_nothing_stored(tmp_path):
    site = Installation(tmp_path)
    with tmpfs(site.data_dir, "4m"):
        await site.start_server(grace_s=2, settings={"heartbeat_s": 1})
        try:
            alice = await site.start_resident("alice", "--answer", "ignore", device_id="phone")
            door = await site.start_door("frontdoor", GROUPS)
            filler = fill(site.data_dir)
            first = await ring_reaches(door, alice)  # the call cannot be written; the phone rings anyway
            await door.ctl("hangup")
            assert (await alice.wait_for_event("ended", call_id=first["call_id"]))["reason"] == "canceled"
            status, health = await site.api("GET", "/healthz")
            assert health["store_errors"] >= 1 and "full" in health["last_store_error"]
            filler.unlink()  # the installer frees space: calls are recorded again
            second = await ring_reaches(door, alice)
            await door.ctl("hangup")
            await alice.wait_for_event("ended", call_id=second["call_id"])
            assert (await record(site, second["call_id"]))["end_reason"] == "canceled"
            assert (await site.api("GET", "/v1/users/alice"))[0] == 200
        finally:
            await site.close()


async def test_a_read_only_database_stops_the_server_with_one_line(tmp_path):
    site = Installation(tmp_path)
    with tmpfs(site.data_dir, "8m"):
        await site.start_server()
        await site.stop_server()
        subprocess.run(["mount", "-o", "remount,ro", str(site.data_dir)], check=True)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "intercom_server.cli", "--config", str(tmp_path / "server.yaml"), "serve",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        _, err = await asyncio.wait_for(proc.communicate(), 60)
    lines = err.decode().strip().splitlines()
    assert proc.returncode == 1 and "Traceback" not in err.decode()
    assert lines[-1].startswith(f"intercom-server: cannot open the database {site.data_dir / 'intercom.db'}")


@contextlib.contextmanager
def door_host() -> Iterator[tuple[str, str, str]]:
    """A test host of our own for the door: a network namespace joined to this one by a veth
    pair. Yields (namespace, server-side address, door-side address)."""
    n = os.getpid() % 250 + 1
    name, outer, inner = f"icdoor{os.getpid()}", f"icv{os.getpid()}h", f"icv{os.getpid()}d"
    host, door = f"10.213.{n}.1", f"10.213.{n}.2"
    steps = [["ip", "netns", "add", name],
             ["ip", "link", "add", outer, "type", "veth", "peer", "name", inner],
             ["ip", "link", "set", inner, "netns", name],
             ["ip", "addr", "add", f"{host}/30", "dev", outer], ["ip", "link", "set", outer, "up"],
             ["ip", "netns", "exec", name, "ip", "addr", "add", f"{door}/30", "dev", inner],
             ["ip", "netns", "exec", name, "ip", "link", "set", inner, "up"],
             ["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"]]
    try:
        for step in steps:
            done = subprocess.run(step, capture_output=True, text=True)
            if done.returncode != 0:
                pytest.skip(f"cannot make a network namespace here ({' '.join(step)}): {done.stderr.strip()}")
        yield name, host, door
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
        subprocess.run(["ip", "link", "del", outer], capture_output=True)


def nft(namespace: str, script: str) -> None:
    subprocess.run(["ip", "netns", "exec", namespace, "nft", "-f", "-"], input=script, text=True, check=True)


async def test_the_doors_network_drops_its_server_link_and_the_answered_call_goes_on(tmp_path):
    """The link dropped by a firewall rule on the door's own host, as a failing router does:
    packets vanish, nothing is refused. The media takes the same wire on other ports."""
    with door_host() as (namespace, host, door_address):
        site = Installation(tmp_path)
        await site.start_server(grace_s=2, settings={"heartbeat_s": 1, "listen": {"host": host}})
        port = int(site.http_url.rsplit(":", 1)[1])
        try:
            alice = await site.start_resident("alice", "--hangup-after-frames", "0", device_id="phone")
            door = await site.start_door("frontdoor", GROUPS, prefix=("ip", "netns", "exec", namespace))
            await door.ring()
            answered = await alice.wait_for_event("answered", timeout=30)
            await alice.wait_for_event("first_frame", timeout=30)
            nft(namespace, f"""table inet cut {{
                chain out {{ type filter hook output priority 0; tcp dport {port} drop; }}
                chain in {{ type filter hook input priority 0; tcp sport {port} drop; }}
            }}""")
            cut_off = await door.wait_status(lambda s: not s["server"]["connected"], timeout=40)
            assert cut_off["state"] == "connected"
            nft(namespace, "delete table inet cut")
            back = await door.wait_status(lambda s: s["server"]["connected"], timeout=40)
            assert back["state"] == "connected" and back["call"]["call_id"] == answered["call_id"]
            await door.ctl("hangup")
            ended = await alice.wait_for_event("ended", call_id=answered["call_id"], timeout=30)
            assert ended["reason"] == "completed" and ended["video_frames"] > 0
            assert (await record(site, answered["call_id"]))["end_reason"] == "completed"
        finally:
            await site.close()
