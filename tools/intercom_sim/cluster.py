"""A cluster on loopback, as docs/cluster.md sets one up: Debian's PostgreSQL and Redis, several
`intercom-server` processes, and Debian's HAProxy in front, taking WebSockets and asking each
process's /healthz. The doors and residents of its `Installation` connect through HAProxy.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from cryptography.hazmat.primitives.asymmetric import ec

from .harness import SERVER, Installation, Process, merge
from .postgres import Postgres, free_port


class Redis:
    def __init__(self, root: Path) -> None:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        assert Path(binary).exists(), "redis-server not found: `make test` installs Debian's redis-server package"
        self.port = free_port()
        root.mkdir(parents=True, exist_ok=True)
        self._argv = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                      "--dir", str(root)]
        self._log = root / "redis.log"
        self.proc = self._start()
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def _start(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(self._argv, stdout=open(self._log, "ab"), stderr=subprocess.STDOUT)

    def start_again(self) -> None:
        """After `stop`: the same port, nothing in it (no persistence here), as after a crash."""
        self.proc = self._start()

    async def ready(self) -> None:
        for _ in range(500):
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.close()
                return
            except OSError:
                await asyncio.sleep(0.02)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


HAPROXY = """\
global
    maxconn 8000
    stats socket {stats} level admin
defaults
    mode http
    option forwardfor
    option redispatch
    retries 3
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    timeout tunnel 1h
    # A process slow to answer /healthz because both cores are busy (the benchmark) is not
    # down; one stopped or stopping is refused or answers 503 at once, the checks' 200 ms on.
    timeout check 2s
frontend intercom
    bind 127.0.0.1:{port}
    default_backend servers
backend servers
    balance roundrobin
    option httpchk GET /healthz
    http-check expect status 200
    default-server inter 200ms fall 1 rise 1
{servers}
"""


class Cluster:
    """`size` server processes behind HAProxy; `site` is the Installation whose doors and
    residents connect through HAProxy."""

    def __init__(self, root: Path, size: int = 3, settings: dict[str, Any] | None = None) -> None:
        self.root = root
        self.size = size
        self.settings = settings or {}
        self.site = Installation(root)
        self.ports = [free_port() for _ in range(size)]
        self.port = free_port()
        self.servers: list[Process | None] = [None] * size
        self.api_token = secrets.token_urlsafe(24)
        self.postgres: Postgres | None = None
        #: The processes' PostgreSQL URL, once started.
        self.database: str | None = None
        self.redis: Redis | None = None
        self.haproxy: subprocess.Popen[bytes] | None = None
        # HAProxy's stats socket: a Unix socket's path is short (97 bytes), a test's root is not.
        self._stats_dir = Path(tempfile.mkdtemp(prefix="intercom-haproxy-"))
        self._stats = self._stats_dir / "stats.sock"

    def config_path(self, index: int) -> Path:
        return self.root / f"server-{index}.yaml"

    def url(self, index: int) -> str:
        return f"http://127.0.0.1:{self.ports[index]}"

    async def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.postgres = Postgres()
        database = self.database = self.postgres.new_database()
        self.redis = Redis(self.root / "redis")
        await self.redis.ready()
        # One VAPID key for every process: a phone subscribes once, whichever process it reaches.
        key = ec.generate_private_key(ec.SECP256R1()).private_numbers().private_value.to_bytes(32, "big")
        vapid = base64.urlsafe_b64encode(key).rstrip(b"=").decode()
        self.site.data_dir.mkdir(parents=True, exist_ok=True)
        (self.site.data_dir / "api_token").write_text(self.api_token + "\n")
        for index in range(self.size):
            config = merge({
                "listen": {"host": "127.0.0.1", "port": self.ports[index]},
                "data_dir": str(self.root / f"server-{index}-data"),
                "database": database, "api_token": self.api_token,
                "cluster": {"redis": self.redis.url, "name": f"s{index}"},
                "push": {"vapid_private_key": vapid},
                "trusted_proxies": ["127.0.0.1"],
                "messages": {"directory": str(self.root / "messages")},  # shared, as on NFS
            }, self.settings)
            self.config_path(index).write_text(yaml.safe_dump(config))
        # The first process makes the schema; the others find it made.
        await self.start_server(0)
        await asyncio.gather(*(self.start_server(i) for i in range(1, self.size)))
        shutil.copy(self.config_path(0), self.root / "server.yaml")  # the installer's shell commands
        lines = "\n".join(f"    server s{i} 127.0.0.1:{port} check" for i, port in enumerate(self.ports))
        (self.root / "haproxy.cfg").write_text(HAPROXY.format(port=self.port, servers=lines, stats=self._stats))
        haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
        assert Path(haproxy).exists(), "haproxy not found: `make test` installs Debian's haproxy package"
        self.haproxy = subprocess.Popen([haproxy, "-db", "-f", str(self.root / "haproxy.cfg")],
                                        stdout=open(self.root / "haproxy.log", "ab"), stderr=subprocess.STDOUT)
        self.site.http_url = f"http://127.0.0.1:{self.port}"
        self.site.ws_url = f"ws://127.0.0.1:{self.port}/v1/ws"
        await self.wait_healthy(range(self.size))
        await self.site.server_cli("site", "add", self.site.site_id, "--name", "Demo house")

    async def start_server(self, index: int) -> None:
        process = await Process.start(f"server-{index}", [*SERVER, "--config", str(self.config_path(index)), "serve"],
                                      self.site.logs)
        await process.wait_for_line(lambda text: text.startswith("intercom-server listening on "), 30)
        self.servers[index] = process

    async def health(self, index: int) -> tuple[int, dict[str, Any]]:
        async with aiohttp.ClientSession() as http:
            async with http.get(self.url(index) + "/healthz", headers={"Api-Token": self.api_token}) as resp:
                return resp.status, await resp.json()

    async def wait_healthy(self, indices: Any, timeout: float = 30.0) -> None:
        """Until each of these processes says it takes connections, and HAProxy has seen so."""
        async def healthy(index: int) -> None:
            while (await self.health(index))[0] != 200:
                await asyncio.sleep(0.05)
        async def routed(index: int) -> None:
            while await self.haproxy_status(index) != "UP":
                if self.haproxy is not None and self.haproxy.poll() is not None:
                    raise RuntimeError(f"haproxy exited: {(self.root / 'haproxy.log').read_text()[-2000:]}")
                await asyncio.sleep(0.05)
        await asyncio.wait_for(asyncio.gather(*(healthy(i) for i in indices)), timeout)
        await asyncio.wait_for(asyncio.gather(*(routed(i) for i in indices)), timeout)

    async def haproxy_status(self, index: int) -> str:
        """What HAProxy makes of a process now: UP, DOWN, ... (its stats socket says)."""
        try:
            reader, writer = await asyncio.open_unix_connection(str(self._stats))
        except OSError:
            return "starting"
        writer.write(b"show stat\n")
        await writer.drain()
        text = (await reader.read()).decode()
        writer.close()
        for line in text.splitlines():
            fields = line.split(",")
            if len(fields) > 17 and fields[0] == "servers" and fields[1] == f"s{index}":
                return fields[17].split(" ")[0]
        return "unknown"

    async def restart(self, index: int) -> None:
        """SIGTERM (the process drains: its devices go to the others), then start it again."""
        process = self.servers[index]
        assert process is not None
        await process.stop(timeout=20)
        await self.start_server(index)
        await self.wait_healthy([index])

    async def kill(self, index: int) -> None:
        process = self.servers[index]
        assert process is not None
        await process.kill()
        self.servers[index] = None

    async def close(self) -> None:
        await self.site.close()
        for process in self.servers:
            if process is not None:
                await process.stop()
        if self.haproxy is not None:
            self.haproxy.terminate()
            self.haproxy.wait(10)
        if self.redis is not None:
            self.redis.stop()
        if self.postgres is not None:
            self.postgres.stop()
        shutil.rmtree(self._stats_dir, ignore_errors=True)
