"""Who may talk to the visitor from an NVR or a dashboard, and when: the door's rule.

The ONVIF backchannel lets a client send audio that the door plays on its speaker. That is a
voice at someone's front door, so:

- Only the accounts listed in `rtsp.talk` get a backchannel at all (GStreamer's permission
  check on the `/talk` path, see `rtsp`).
- A resident's call wins. While the door has an answered call, backchannel audio is not
  played (it is counted as muted), so nobody can talk over the resident or listen in through
  the echo of their own voice. Ringing is not a call yet: a dashboard may say "coming".
- Every talk session is logged when it opens and when it closes, with the account, how long
  it lasted, and how much of it was played or muted.

The backchannel's audio arrives on GStreamer's threads; `deliver` only hands 20 ms frames to
the speaker's own bounded queue, which its writer thread mixes in (and the echo canceller
hears, as it hears everything the speaker plays).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger("intercom.talk")


@dataclass
class TalkSession:
    account: str
    opened: float = field(default_factory=time.monotonic)
    frames: int = 0
    muted: int = 0


class TalkGate:
    def __init__(self, in_call: Callable[[], bool], play: Callable[[np.ndarray], None]) -> None:
        """`in_call` is read from GStreamer's threads: it must only read state (the door's
        call is one attribute, read atomically)."""
        self._in_call = in_call
        self._play = play
        self._lock = threading.Lock()
        self._sessions: dict[int, TalkSession] = {}
        self.sessions_opened = 0
        self.last: dict[str, object] | None = None

    def open(self, key: int, account: str) -> None:
        with self._lock:
            self._sessions[key] = TalkSession(account)
            self.sessions_opened += 1
        log.info("talk session opened by %s%s", account, " (muted: a resident's call is on)" if self._in_call() else "")

    def deliver(self, key: int, samples: np.ndarray) -> None:
        """One 20 ms frame (mono s16 at the speaker's rate) from session `key`'s backchannel."""
        session = self._sessions.get(key)
        if session is None:
            return
        if self._in_call():
            session.muted += 1
            return
        session.frames += 1
        self._play(samples)

    def close(self, key: int) -> None:
        with self._lock:
            session = self._sessions.pop(key, None)
        if session is None:
            return
        seconds = round(time.monotonic() - session.opened, 1)
        self.last = {"account": session.account, "seconds": seconds, "played_s": session.frames / 50,
                     "muted_s": session.muted / 50}
        log.info("talk session closed by %s after %.1f s: %.1f s played, %.1f s muted (resident's call)",
                 session.account, seconds, session.frames / 50, session.muted / 50)

    @property
    def open_sessions(self) -> list[str]:
        with self._lock:
            return [s.account for s in self._sessions.values()]

    def status(self) -> dict[str, object]:
        return {"talking": self.open_sessions, "sessions": self.sessions_opened,
                "last": self.last}
