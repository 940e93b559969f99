"""systemd's notify protocol: READY, RELOADING, STOPPING and the watchdog ping.

The protocol is one datagram per state on the socket named by $NOTIFY_SOCKET (sd_notify(3)).
The maintained binding (systemd-python) needs libsystemd's headers and a compiler on the Pi
for these few lines, so the daemon speaks it directly. Outside systemd every call is a no-op.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import time

log = logging.getLogger("intercom.systemd")


class Notifier:
    def __init__(self) -> None:
        self._address = os.environ.get("NOTIFY_SOCKET") or None
        if self._address and self._address.startswith("@"):
            self._address = "\0" + self._address[1:]  # an abstract socket
        self._sock: socket.socket | None = None
        if self._address:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        usec = os.environ.get("WATCHDOG_USEC")
        pid = os.environ.get("WATCHDOG_PID")
        mine = pid is None or pid == str(os.getpid())
        self.watchdog_s: float | None = int(usec) / 1e6 if usec and usec.isdigit() and mine else None

    def notify(self, *fields: str) -> None:
        if self._sock is None or self._address is None:
            return
        try:
            self._sock.sendto("\n".join(fields).encode(), self._address)
        except OSError as exc:
            log.warning("cannot notify systemd: %s", exc)

    def ready(self, status: str = "") -> None:
        self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def reloading(self) -> None:
        self.notify("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")

    def stopping(self) -> None:
        self.notify("STOPPING=1")

    async def watchdog(self) -> None:
        """Ping at half the interval from the event loop itself: if the loop hangs, the pings
        stop and systemd restarts the daemon, which is the point."""
        if self.watchdog_s is None:
            return
        while True:
            self.notify("WATCHDOG=1")
            await asyncio.sleep(self.watchdog_s / 2)


async def ready_until_stopped(status: str) -> None:
    """For a service with nothing to reload (the server, the SIP gateway): tell systemd it is
    ready, ping the watchdog from this loop, and return at SIGTERM or SIGINT, having told
    systemd it is stopping. The caller then closes what it runs."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    systemd = Notifier()
    systemd.ready(status)
    watchdog = loop.create_task(systemd.watchdog(), name="watchdog")
    try:
        await stop.wait()
    finally:
        systemd.stopping()
        watchdog.cancel()
