"""Names the hardware-edge threads for the operating system, not only for Python.

`top -H`, `ps -L` and /proc show a thread's kernel name, which Python (before 3.14) leaves
as the process's. Named, an installer sees at a glance whether the camera or the sound card
is what keeps a Pi busy, and the benchmarks tell the simulated camera's cost (which the Pi's
ISP and hardware encoder carry) from the door's own. Threads a library starts from a named
thread (libx264's workers) inherit the name.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger("intercom.threads")

_PR_SET_NAME = 15
_libc = None


def name_thread(name: str) -> None:
    """Set the calling thread's kernel name (at most 15 bytes), where the system allows it."""
    global _libc
    try:
        if _libc is None:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        _libc.prctl(_PR_SET_NAME, name.encode()[:15], 0, 0, 0)
    except (OSError, AttributeError) as exc:  # not Linux: the name is only cosmetic
        log.debug("cannot name thread %s: %s", name, exc)
