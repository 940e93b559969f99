"""TURN credentials minted per session, checked by a real coturn on loopback."""

from __future__ import annotations

import os
import random
import shutil
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator

import pytest
from aiortc import RTCPeerConnection

from intercom.media.peer import rtc_configuration
from intercom_server.ice import IceSettings, TurnSettings, turn_credentials
from intercom_server.settings import HubSettings

SECRET = "coturn-shared-secret-for-tests"


def _free_port() -> int:
    """A port free for both UDP and TCP (coturn listens on both), below Linux's ephemeral
    ports (32768-60999): a kernel-chosen UDP port could be taken for TCP by any client socket
    meanwhile, and coturn then retried its TCP bind for ever without answering on UDP."""
    for port in random.sample(range(10000, 20000), 200):
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp, socket.socket() as tcp:
                udp.bind(("127.0.0.1", port))
                tcp.bind(("127.0.0.1", port))
                return port
        except OSError:
            continue
    raise RuntimeError("no port free for both UDP and TCP in 10000-19999")


def _answers_stun(port: int, within_s: float) -> bool:
    """Send STUN binding requests (RFC 5389) until one is answered."""
    deadline = time.monotonic() + within_s
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.5)
        while time.monotonic() < deadline:
            transaction = os.urandom(12)
            s.sendto(struct.pack("!HHI", 0x0001, 0, 0x2112A442) + transaction, ("127.0.0.1", port))
            try:
                data, _ = s.recvfrom(2048)
            except TimeoutError:
                continue
            if data[8:20] == transaction:
                return True
    return False


@pytest.fixture(scope="module")
def coturn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """coturn in shared-secret mode, relaying on loopback only; yields its turn: URL."""
    binary = shutil.which("turnserver")
    assert binary, "turnserver not found: `make test` installs Debian's coturn package"
    workdir = tmp_path_factory.mktemp("coturn")
    port = _free_port()
    # Also below the ephemeral ports, and above the listening port, so the relay range can
    # neither contain the listening port (40000 + port % 20000 did, for ports from 40000: one
    # allocation in 51 failed) nor ports the kernel hands other sockets meanwhile.
    relay_low = 20000 + port % 10000
    proc = subprocess.Popen(
        [binary, "-n", "--listening-ip=127.0.0.1", f"--listening-port={port}", "--relay-ip=127.0.0.1",
         f"--min-port={relay_low}", f"--max-port={relay_low + 50}", "--use-auth-secret",
         f"--static-auth-secret={SECRET}", "--realm=intercom.test", "--no-tls", "--no-dtls", "--no-cli",
         "--allow-loopback-peers", "--log-file=stdout", "--simple-log", f"--userdb={workdir / 'turndb'}",
         f"--pidfile={workdir / 'pid'}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ready = threading.Event()
    log: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            log.append(line)
            if "Total General servers" in line:
                ready.set()

    threading.Thread(target=read, daemon=True).start()
    assert ready.wait(15), "coturn did not start:\n" + "".join(log)
    # Its log line comes before every listener thread is up: wait until it answers on UDP.
    assert _answers_stun(port, 15), "coturn does not answer STUN:\n" + "".join(log)
    yield f"turn:127.0.0.1:{port}"
    proc.terminate()
    proc.wait(10)


async def _candidate_types(ice_servers: list[dict]) -> set[str]:
    pc = RTCPeerConnection(rtc_configuration(ice_servers))
    try:
        pc.createDataChannel("probe")
        await pc.setLocalDescription(await pc.createOffer())  # returns once gathering is complete
        lines = [line for line in pc.localDescription.sdp.splitlines() if line.startswith("a=candidate:")]
        return {line.split(" typ ")[1].split()[0] for line in lines}
    finally:
        await pc.close()


def test_credentials_name_their_expiry_and_user_and_differ_per_user():
    username, password = turn_credentials(SECRET, "alice", 600, now=1_000_000)
    assert username == "1000600:alice"
    assert password != turn_credentials(SECRET, "bob", 600, now=1_000_000)[1]
    assert password != turn_credentials("another-secret", "alice", 600, now=1_000_000)[1]


async def test_the_server_hands_out_turn_credentials_that_coturn_accepts(coturn, server):
    server.settings.ice = IceSettings(static=[{"urls": "stun:127.0.0.1:3478"}],
                                      turn=TurnSettings(urls=[coturn], shared_secret=SECRET, ttl_s=600))
    client = await server.connect()
    reply = await client.request("authenticate", user_id="alice", access_token=await server.user("alice"))
    stun, turn = reply["ice_servers"]
    assert stun == {"urls": "stun:127.0.0.1:3478"}
    expiry, user = turn["username"].split(":")
    assert user == "alice" and 590 <= int(expiry) - time.time() <= 600
    assert "relay" in await _candidate_types([turn])


async def test_expired_or_forged_credentials_get_no_relay(coturn):
    username, password = turn_credentials(SECRET, "alice", 600, now=time.time() - 3600)
    assert "relay" not in await _candidate_types([{"urls": coturn, "username": username, "credential": password}])
    username, password = turn_credentials("guessed-secret", "alice", 600, now=time.time())
    assert "relay" not in await _candidate_types([{"urls": coturn, "username": username, "credential": password}])


def test_turn_is_off_unless_configured():
    assert HubSettings().ice.for_user("alice", time.time()) == []
