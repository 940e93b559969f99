"""Presses the server did not hear, kept on the board until it has them.

A visitor who pressed while the server was unreachable must reach the residents even if the
door restarts or loses power before the server is back: each kept press is a small JSON file
in `<state_dir>/presses` (written to a temporary name, flushed to the card, then renamed, so
a power cut leaves the old set or the new one, never half a file), read back at start, and
removed only once the server took it (or refused it for good). The call policy keeps its
list in memory, as it must stay free of I/O; the station saves that list here after each
change.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path

from intercom_protocol.door import MissedPress

log = logging.getLogger("intercom.kept_presses")


def _name(press: MissedPress) -> str:
    return f"press-{round(press.pressed_at * 1000)}.json"


class KeptPresses:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        #: Why presses cannot be kept on disk, for the installer's status; None when they can.
        self.last_error: str | None = None

    def load(self) -> list[MissedPress]:
        """The presses kept by an earlier run, oldest first; a file that cannot be read is
        named in the log and left where it is for the installer to look at."""
        presses: list[MissedPress] = []
        try:
            paths = sorted(self.directory.glob("press-*.json"))
        except OSError as exc:
            self._failed("read", exc)
            return presses
        for path in paths:
            try:
                data = json.loads(path.read_text())
                snapshot = data.get("snapshot")
                presses.append(MissedPress(float(data["pressed_at"]),
                                           base64.b64decode(snapshot, validate=True) if snapshot else None))
            except (OSError, ValueError, KeyError, TypeError, binascii.Error) as exc:
                log.warning("cannot read the kept press %s: %s; leaving it there", path, exc)
        presses.sort(key=lambda p: p.pressed_at)
        if presses:
            log.info("%d press(es) made while the server was unreachable are waiting to be reported", len(presses))
        return presses

    def save(self, presses: Iterable[MissedPress]) -> None:
        """Make the directory hold exactly these presses: new ones written, reported (or
        dropped) ones removed."""
        wanted = {_name(p): p for p in presses}
        try:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            present = {p.name for p in self.directory.glob("press-*.json")}
            for name, press in wanted.items():
                if name not in present:
                    self._write(self.directory / name, press)
            for name in present - wanted.keys():
                (self.directory / name).unlink(missing_ok=True)
        except OSError as exc:
            self._failed("write", exc)
            return
        self.last_error = None

    def _write(self, path: Path, press: MissedPress) -> None:
        body = {"pressed_at": press.pressed_at,
                "snapshot": base64.b64encode(press.snapshot).decode() if press.snapshot else None}
        partial = path.with_suffix(".part")
        with open(partial, "w") as out:
            json.dump(body, out)
            out.flush()
            os.fsync(out.fileno())
        partial.replace(path)
        directory = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    def _failed(self, what: str, exc: OSError) -> None:
        self.last_error = f"cannot {what} kept presses in {self.directory}: {exc.strerror or exc}"
        log.warning("%s; they are kept in memory only", self.last_error)
