"""The command-line resident's own handling of the server's events."""

from __future__ import annotations

import time
from typing import Any

from intercom_protocol.calls import ClientCall
from intercom_resident.client import Policy, Resident


async def test_events_read_before_the_dial_reply_reached_its_task_are_not_lost():
    """A door that declines at once: the dial's `ok` and the call's `ended` are read in one
    go, before the dialing task has taken the call id from the reply."""
    reports: list[tuple[str, dict[str, Any]]] = []
    resident = Resident({"url": "ws://127.0.0.1:9/v1/ws", "user_id": "bob", "access_token": "t"},
                        Policy(once=True), lambda kind, body: reports.append((kind, body)))
    call = resident.call = ClientCall.dial(time.monotonic(), 30)
    resident._event({"type": "ringing", "call_id": "c1", "devices": 1})
    resident._event({"type": "ended", "call_id": "c1", "reason": "declined", "by": None})
    assert call.live  # not yet known to be this call
    resident._dialed(call, "c1")
    assert not call.live and call.end_reason == "declined"
    await resident.done.wait()  # --once: the end was reported and the resident stops
    assert [kind for kind, _ in reports] == ["ended"] and reports[0][1]["reason"] == "declined"
