"""The door and the server under systemd: the unit files are valid and hardened, and both
programs speak sd_notify (ready, watchdog pings from the event loop, reloading, stopping) as
Type=notify expects."""

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "intercom.service"
SERVER_UNIT = ROOT / "systemd" / "intercom-server.service"
SIP_UNIT = ROOT / "systemd" / "intercom-sip.service"
INSTALLED = "/opt/intercom/venv/bin/"


def directives(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        if re.match(r"^[A-Za-z]+=", line):
            key, value = line.split("=", 1)
            found.setdefault(key, []).append(value)
    return found


def local_unit(tmp_path: Path, shipped: Path = UNIT) -> Path:
    """The unit as shipped, with the install path pointed at this checkout's venv: verify
    checks that ExecStart's program exists."""
    unit = tmp_path / shipped.name
    unit.write_text(shipped.read_text().replace(INSTALLED, str(Path(sys.prefix) / "bin") + "/"))
    return unit


@pytest.mark.parametrize("shipped", [UNIT, SERVER_UNIT, SIP_UNIT], ids=["door", "server", "sip"])
def test_the_unit_passes_systemd_analyze_verify(tmp_path, shipped):
    result = subprocess.run(["systemd-analyze", "verify", str(local_unit(tmp_path, shipped))], capture_output=True,
                            text=True)
    assert result.returncode == 0 and result.stderr == "" and result.stdout == "", result.stderr


def test_the_unit_is_notify_with_a_watchdog_a_user_and_hardening():
    unit = directives(UNIT.read_text())
    assert unit["Type"] == ["notify"] and int(unit["WatchdogSec"][0]) > 0
    assert unit["Restart"] == ["on-failure"] and unit["User"] == ["intercom"]
    assert unit["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert unit["NoNewPrivileges"] == ["yes"] and unit["ProtectSystem"] == ["strict"]
    assert unit["DevicePolicy"] == ["closed"]
    allowed = {d.split()[0] for d in unit["DeviceAllow"]}
    assert allowed == {"char-gpiochip", "/dev/gpiomem", "char-alsa", "char-video4linux", "char-media", "char-dma_heap"}
    assert unit["StandardOutput"] == ["journal"] and unit["CapabilityBoundingSet"] == [""]


def test_the_server_unit_is_notify_with_a_watchdog_its_own_user_and_no_devices():
    unit = directives(SERVER_UNIT.read_text())
    assert unit["Type"] == ["notify"] and int(unit["WatchdogSec"][0]) > 0 and unit["Restart"] == ["on-failure"]
    assert unit["User"] == ["intercom-server"] and unit["StateDirectory"] == ["intercom-server"]
    assert unit["RuntimeDirectory"] == ["intercom-server"]
    assert unit["ExecStart"] == ["/opt/intercom/venv/bin/intercom-server --config /etc/intercom/server.yaml serve"]
    assert unit["NoNewPrivileges"] == ["yes"] and unit["ProtectSystem"] == ["strict"]
    assert unit["PrivateDevices"] == ["yes"] and unit["DevicePolicy"] == ["closed"] and "DeviceAllow" not in unit
    assert unit["CapabilityBoundingSet"] == [""] and unit["StandardOutput"] == ["journal"]
    # data_dir of the shipped example is the unit's state directory.
    assert "\ndata_dir: /var/lib/intercom-server\n" in (ROOT / "config/server.example.yaml").read_text()


def test_the_sip_unit_is_notify_with_a_watchdog_its_own_user_and_no_devices():
    unit = directives(SIP_UNIT.read_text())
    assert unit["Type"] == ["notify"] and int(unit["WatchdogSec"][0]) > 0 and unit["Restart"] == ["on-failure"]
    assert unit["User"] == ["intercom-sip"]
    assert unit["ExecStart"] == ["/opt/intercom/venv/bin/intercom-sip --config /etc/intercom/sip.yaml run"]
    assert unit["PrivateDevices"] == ["yes"] and unit["DevicePolicy"] == ["closed"] and "DeviceAllow" not in unit
    assert unit["CapabilityBoundingSet"] == [""] and unit["ProtectSystem"] == ["strict"]


@pytest.mark.parametrize("shipped", [UNIT, SERVER_UNIT, SIP_UNIT], ids=["door", "server", "sip"])
def test_systemds_own_security_review(tmp_path, shipped):
    result = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(local_unit(tmp_path, shipped))],
                            capture_output=True, text=True)
    score = float(re.search(r"Overall exposure level for \S+: ([\d.]+)", result.stdout).group(1))
    print(f"systemd-analyze security exposure of {shipped.name}: {score} (0 is best, 10 is unprotected)")
    assert score <= 2.5


async def test_the_daemon_notifies_ready_pings_the_watchdog_reloads_and_stops(tmp_path):
    config = {
        "server": {"url": "ws://127.0.0.1:9/v1/ws", "user_id": "frontdoor", "access_token": "ict_x"},
        "hardware": {"pins": {"backend": "mock", "bell_button": 17},
                     "camera": {"width": 160, "height": 120}, "microphone": {"backend": "tone"},
                     "speaker": {"device": "null"}},
        "calls": {"ring_groups": [{"residents": ["alice"]}]},
        "control": {"socket": str(tmp_path / "control.sock")},
        "state_dir": str(tmp_path / "state"),
    }
    path = tmp_path / "intercom.yaml"
    path.write_text(yaml.safe_dump(config))
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    notify.setblocking(False)
    loop = asyncio.get_running_loop()
    env = {**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "400000"}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "intercom.cli", "run", "--config", str(path),
                                                env=env, stderr=asyncio.subprocess.DEVNULL)

    async def next_message() -> str:
        return (await asyncio.wait_for(loop.sock_recv(notify, 4096), 10)).decode()

    try:
        assert (await next_message()).startswith("READY=1")
        assert [await next_message() for _ in range(3)] == ["WATCHDOG=1"] * 3  # every 0.2 s, from the loop
        proc.send_signal(signal.SIGHUP)
        seen = [await next_message() for _ in range(2)]
        while not seen[-1].startswith("READY=1"):
            seen.append(await next_message())
        reloading = [m for m in seen if m.startswith("RELOADING=1")]
        assert reloading and "MONOTONIC_USEC=" in reloading[0]
        proc.send_signal(signal.SIGTERM)
        while (message := await next_message()) == "WATCHDOG=1":
            pass
        assert message == "STOPPING=1"
        assert await asyncio.wait_for(proc.wait(), 15) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        notify.close()


async def test_the_server_notifies_ready_once_listening_pings_the_watchdog_and_stops(tmp_path):
    """And the lines it logged while starting follow the listening line (held back, so that a
    start that fails shows its one-line reason alone)."""
    config = tmp_path / "server.yaml"
    config.write_text(yaml.safe_dump({"listen": {"host": "127.0.0.1", "port": 0}, "data_dir": str(tmp_path / "d")}))
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    notify.setblocking(False)
    loop = asyncio.get_running_loop()
    env = {**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "400000"}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "intercom_server.cli", "--config", str(config),
                                                "serve", env=env, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)

    async def next_message() -> str:
        return (await asyncio.wait_for(loop.sock_recv(notify, 4096), 10)).decode()

    try:
        ready = await next_message()
        assert ready.startswith("READY=1\nSTATUS=listening on 127.0.0.1:"), ready
        assert [await next_message() for _ in range(3)] == ["WATCHDOG=1"] * 3
        proc.send_signal(signal.SIGTERM)
        while (message := await next_message()) == "WATCHDOG=1":
            pass
        assert message == "STOPPING=1"
        out, err = await asyncio.wait_for(proc.communicate(), 15)
        assert proc.returncode == 0
        assert out.decode().startswith("intercom-server listening on http://127.0.0.1:")
        assert "made a VAPID key for Web Push" in err.decode() and "Platform API token from" in err.decode()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        notify.close()
