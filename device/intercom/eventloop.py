"""The door's event loop: uvloop (libuv) where it is installed, asyncio's own otherwise.

A call wakes the door's loop about 135 times a second (the camera's frames, the microphone's,
the resident's audio packets), and on a small board each wake-up costs more than the work it
brings. uvloop's wake-ups are cheaper: measured on x86 (2 cores), a thread handing a frame to
the loop 50 times a second cost 1.1 % of a core instead of 1.5 %, a 50 Hz timer 0.8 % instead
of 1.0 %; in a call the loop's thread went from 5.4 % to 4.9 % and, idle, from 0.7 % to
0.3 %. The door's code does not depend on which loop runs it (the tests run it on both).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

log = logging.getLogger("intercom.eventloop")

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run` on uvloop when it can be imported (it has no wheel for 32-bit ARM)."""
    try:
        import uvloop
    except ImportError:
        log.info("uvloop is not installed: running on asyncio's own event loop")
        return asyncio.run(main)
    return uvloop.run(main)
