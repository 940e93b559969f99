"""The door under systemd: the unit file is valid and hardened, and the daemon speaks sd_notify
(ready, watchdog pings from its event loop, reloading, stopping) as Type=notify expects."""

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "intercom.service"
INSTALLED = "/opt/intercom/venv/bin/intercom"


def directives(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        if re.match(r"^[A-Za-z]+=", line):
            key, value = line.split("=", 1)
            found.setdefault(key, []).append(value)
    return found


def local_unit(tmp_path: Path) -> Path:
    """The unit as shipped, with the install path pointed at this checkout's venv: verify
    checks that ExecStart's program exists."""
    unit = tmp_path / "intercom.service"
    unit.write_text(UNIT.read_text().replace(INSTALLED, str(Path(sys.prefix) / "bin" / "intercom")))
    return unit


def test_the_unit_passes_systemd_analyze_verify(tmp_path):
    result = subprocess.run(["systemd-analyze", "verify", str(local_unit(tmp_path))], capture_output=True, text=True)
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


def test_systemds_own_security_review(tmp_path):
    result = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(local_unit(tmp_path))],
                            capture_output=True, text=True)
    score = float(re.search(r"Overall exposure level for \S+: ([\d.]+)", result.stdout).group(1))
    print(f"systemd-analyze security exposure: {score} (0 is best, 10 is unprotected)")
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
