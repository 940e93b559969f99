"""Debian's PostgreSQL on loopback, in a data directory made here and removed at `stop`: the
tests start one for their session (a new database for each test that asks), the benchmarks
one for the server part."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _binary(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    assert found, f"{name} not found: `make test` installs Debian's postgresql package"
    return found[-1]


class Postgres:
    """PostgreSQL refuses to run as root: as root, the server runs as Debian's `postgres` user."""

    def __init__(self, durable: bool = False) -> None:
        """`durable`: PostgreSQL's defaults (fsync at each commit), for figures that compare
        with SQLite's; else no fsync, for tests, whose data outlives nothing."""
        self.root = Path(tempfile.mkdtemp(prefix="intercom-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self._as: list[str] = []
        if os.geteuid() == 0:
            self._as = ["runuser", "-u", "postgres", "--"]
            shutil.chown(self.root, "postgres", "postgres")
        self._run(_binary("initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                  "--no-instructions")
        fast = "" if durable else " -c fsync=off -c full_page_writes=off"
        self._options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c max_connections=200{fast}"
        self.resume()
        self._databases = 0

    def pause(self) -> None:
        """Stop the server as a crash or an outage would (its data stays)."""
        self._run(_binary("pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def resume(self) -> None:
        self._run(_binary("pg_ctl"), "-D", str(self.data), "-l", str(self.root / "log"), "-w", "-t", "60",
                  "-o", self._options, "start")

    def _run(self, *command: str) -> None:
        subprocess.run([*self._as, *command], check=True, capture_output=True, cwd=self.root)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """The URL of a new, empty database."""
        self._databases += 1
        name = f"test_{self._databases}"
        self._run(_binary("psql"), "-h", "127.0.0.1",
                  "-p", str(self.port), "-U", "postgres", "-q", "-c", f"CREATE DATABASE {name}")
        return self.url(name)

    def stop(self) -> None:
        subprocess.run([*self._as, _binary("pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop"],
                       capture_output=True, cwd=self.root)
        shutil.rmtree(self.root, ignore_errors=True)
