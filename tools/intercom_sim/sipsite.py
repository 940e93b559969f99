"""A house with SIP phones, on loopback: the installation (server, door, apps) as processes,
Debian's kamailio as the registrar, phones on PJSIP (another SIP stack than the gateway's),
and the gateway itself as an installer runs it (`intercom-sip run` with its YAML)."""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from .harness import Installation, Process, command
from .kamailio import Kamailio
from .postgres import free_port

SIP_GATEWAY = command("intercom-sip", "intercom_sip.cli")
GATEWAY_PASSWORD = "gw-secret-7"


class PjPhone:
    """One PJSIP phone process (intercom_sim.pjphone): commands in, events out."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process, record: Path) -> None:
        self.name = name
        self.proc = proc
        self.record = record
        self.events: list[dict[str, Any]] = []
        self._changed = asyncio.Condition()
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            async with self._changed:
                self.events.append(json.loads(line))
                self._changed.notify_all()

    async def wait(self, event: str, timeout: float = 20.0, after: int = 0, **fields: Any) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            return next((e for e in self.events[after:] if e["event"] == event
                         and all(e.get(k) == v for k, v in fields.items())), None)

        async def scan() -> dict[str, Any]:
            async with self._changed:
                while (hit := found()) is None:
                    if self._reader.done():
                        raise AssertionError(f"phone {self.name} exited; events: {self.events}")
                    await self._changed.wait()
                return hit

        try:
            return await asyncio.wait_for(scan(), timeout)
        except TimeoutError:
            raise AssertionError(f"phone {self.name}: no {event} {fields} within {timeout}s; events: {self.events}") from None

    async def do(self, action: str, **body: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps({"do": action, **body}) + "\n").encode())
        await self.proc.stdin.drain()

    def states(self) -> list[tuple[str, int]]:
        return [(e["state"], e["code"]) for e in self.events if e["event"] == "state"]

    async def heard(self) -> tuple[np.ndarray, int]:
        """What the phone recorded of its last call."""
        recorded = await self.wait("recorded")
        # PJSIP writes the WAV header's sizes when the recorder is freed, which Python's garbage
        # collector decides: read the samples after the 44-byte header, at the bridge's 16 kHz.
        data = Path(recorded["path"]).read_bytes()[44:]
        return np.frombuffer(data[: len(data) // 2 * 2], np.int16), 16000

    async def stop(self) -> None:
        if self.proc.returncode is None:
            await self.do("quit")
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        await asyncio.gather(self._reader, return_exceptions=True)


class Sipp:
    """Debian's sipp as a scripted phone for one call (`intercom_sim/sipp/*.xml`): it exits 0
    when its script ran to the end, and fails on anything unexpected or after `timeout_s`."""

    def __init__(self, root: Path, name: str, scenario: str, timeout_s: float = 60.0) -> None:
        self.name = name
        self.port = free_port()
        self.scenario = Path(__file__).parent / "sipp" / f"{scenario}.xml"
        self.root = root
        self.timeout_s = timeout_s
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        binary = shutil.which("sipp") or "/usr/bin/sipp"
        assert Path(binary).exists(), "sipp not found: `make test` installs Debian's sip-tester package"
        self.proc = await asyncio.create_subprocess_exec(
            binary, "-sf", str(self.scenario), "-i", "127.0.0.1", "-p", str(self.port), "-m", "1", "-nostdin",
            "-timeout", f"{self.timeout_s:g}s", "-timeout_error", "-trace_err", cwd=str(self.root),
            stdout=asyncio.subprocess.DEVNULL, stderr=(self.root / f"sipp-{self.name}.log").open("ab"))

    async def exited(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        return await asyncio.wait_for(self.proc.wait(), timeout)

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


def band_share(samples: np.ndarray, rate: int, freq: float, width: float = 25.0) -> float:
    """The share of the sound's energy within `width` Hz of `freq`: a tone is there or not,
    whatever the codec did to its level."""
    x = samples.astype(np.float64)
    if len(x) < rate // 10:
        return 0.0
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x)))) ** 2
    freqs = np.fft.rfftfreq(len(x), 1 / rate)
    total = spectrum[freqs > 60].sum()
    return float(spectrum[np.abs(freqs - freq) <= width].sum() / total) if total else 0.0


class SipSite:
    """The installation plus the SIP world around it."""

    def __init__(self, root: Path, phones: list[str], scripted: dict[str, str] | None = None) -> None:
        """`phones`: PJSIP phones' SIP users; `scripted`: sipp phones by user, with their script."""
        self.root = root
        self.house = Installation(root)
        self.passwords = {"gw": GATEWAY_PASSWORD, **{p: f"{p}-pw-3" for p in phones}}
        self.sipps = {user: Sipp(root, user, script) for user, script in (scripted or {}).items()}
        self.kamailio = Kamailio(root / "kamailio", self.passwords, {u: p.address for u, p in self.sipps.items()})
        self.phones: list[PjPhone] = []
        self.gateway: Process | None = None
        self.gateway_config: Path | None = None
        self.sip_port = free_port()

    async def start(self, ring_timeout_s: float = 30.0) -> None:
        self.kamailio.start()
        for sipp in self.sipps.values():
            await sipp.start()
        await self.house.start_server(ring_timeout_s=ring_timeout_s)

    async def phone(self, user: str, tone: float = 1700.0, codecs: str = "", srtp: str = "off",
                    register: bool = True) -> PjPhone:
        record = self.root / "recordings" / user
        record.parent.mkdir(parents=True, exist_ok=True)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "intercom_sim.pjphone", "--registrar", self.kamailio.domain, "--user", user,
            "--password", self.passwords[user], "--tone", str(tone), "--codecs", codecs, "--srtp", srtp,
            "--record", str(record), stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=(self.root / f"pjphone-{user}.log").open("ab"))
        phone = PjPhone(user, proc, record)
        self.phones.append(phone)
        if register:
            await phone.wait("registered")
        return phone

    async def start_gateway(self, phones: list[dict[str, Any]], extra: dict[str, Any] | None = None,
                            sip: dict[str, Any] | None = None) -> Process:
        """`phones`: {name, resident, dial, ...}; each resident's token is issued here, as the
        installer does for the gateway."""
        for p in phones:
            if "access_token_file" not in p:
                token = await self.house.server_cli("token", "issue", p["resident"])
                path = self.root / "tokens" / f"{p['resident']}-sip-{p['name']}"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(token["access_token"] + "\n")
                p["access_token_file"] = str(path)
        config = {"server": {"url": self.house.ws_url},
                  "sip": {"user": "gw", "domain": self.kamailio.domain, "password": GATEWAY_PASSWORD,
                          "listen": f"127.0.0.1:{self.sip_port}", "interface": "127.0.0.1", "retry_s": 0.5,
                          **(sip or {})},
                  "phones": phones, "http": {"listen": f"127.0.0.1:{free_port()}"}, **(extra or {})}
        self.gateway_config = self.root / "sip.yaml"
        self.gateway_config.write_text(yaml.safe_dump(config, sort_keys=False))
        return await self.launch_gateway()

    async def launch_gateway(self) -> Process:
        assert self.gateway_config is not None
        self.gateway = await Process.start("sip-gateway", [*SIP_GATEWAY, "--config", str(self.gateway_config),
                                                           "--log-level", "INFO", "run", "--events"],
                                           self.house.logs)
        self.house.processes.append(self.gateway)
        await self.gateway.wait_for_event("started")
        return self.gateway

    async def close(self) -> None:
        for phone in self.phones:
            await phone.stop()
        for sipp in self.sipps.values():
            await sipp.stop()
        await self.house.close()
        self.kamailio.stop()
