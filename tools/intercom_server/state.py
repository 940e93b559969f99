"""What the call service needs from the world, as small interfaces.

The call service (`service.py`, `signin.py`) is written once against these; what stands
behind them is chosen once, where the server is composed (`compose.py`): in memory for one
process (`memory.py`), or in Redis for several (`cluster.py`, `redis_state.py`). Nothing here
knows which, and nothing here assumes a call has one answerer: a registry change is any
change of a `ServerCall`, whatever parties it has.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from intercom_protocol.calls import DeviceRef, Send, ServerCall

from .records import User

#: Ended calls are kept this long, so a request crossing the end learns why (`conflict`)
#: instead of `not_found`, and a resident may still open the door.
RECENT_CALLS_S = 120.0

#: The timers a call may have, each named `<kind>:<call id>`: written with the call (`add`),
#: and dropped by the registry when the call ends.
CALL_TIMERS = ("ring", "max")

#: A change of a call: applied to the call, it returns what to send.
Event = Callable[[ServerCall], list[Send]]


def device_of(key: str) -> DeviceRef:
    """The device a `device_key` names."""
    user, _, device = key.partition("\x1f")
    return DeviceRef(user, device)


def device_key(device: DeviceRef) -> str:
    """A device as one string (ids cannot hold the separator): in Redis sets, messages and timers."""
    return f"{device.user_id}\x1f{device.device_id}"


class Applied(NamedTuple):
    """An event applied to a call: the call after it, what to send, whether it ended the call."""
    call: ServerCall
    sends: list[Send]
    ended: bool


class Endpoint(Protocol):
    """One device's link to the server, as the call service sees it: a WebSocket
    (`connection.py`), a bridge's leg, a test's loopback. It is rung by `send`, asked by
    `request` (raising TimeoutError, or `ConnectionGone` when it leaves first) and let go by
    `close`."""

    user: User | None
    device: DeviceRef | None
    token_id: str | None
    quick_replies: tuple[dict[str, str], ...]
    bridge: dict[str, str] | None
    peer: str

    @property
    def closed(self) -> bool: ...

    def send(self, message: dict[str, Any]) -> None: ...

    async def request(self, kind: str, timeout_s: float, **body: Any) -> dict[str, Any]: ...

    async def close(self, code: int, reason: str) -> None: ...


class Presence(Protocol):
    """Which devices are connected, and to which process."""

    async def join(self, device: DeviceRef) -> str | None:
        """This device is connected here now; returns the other process it was connected to
        before, if any (its connection there is to be closed as replaced)."""

    async def leave(self, device: DeviceRef) -> None: ...

    async def devices_of(self, user_ids: Iterable[str]) -> list[DeviceRef]: ...

    async def where(self, device: DeviceRef) -> str | None: ...


class CallRegistry(Protocol):
    """The live calls and those that ended lately (`RECENT_CALLS_S`)."""

    async def add(self, call: ServerCall, timers: dict[str, float] | None = None, sends: Sequence[Send] = ()) -> None:
        """A new call and its timers (a kind of `CALL_TIMERS` -> when it fires), written
        together, with its first messages to devices on other processes (`Local.is_local`
        says which are not): one step, as a change is. Those to devices here are the
        caller's to deliver, after the caller's `ok` (it learns its call's id from that)."""

    async def get(self, call_id: str) -> ServerCall | None: ...

    async def peek(self, call_id: str) -> ServerCall | None:
        """The call as this process last saw it, else as `get`: for a check that the change
        after it confirms (a stale copy costs the change one more round, never a wrong call)."""

    async def change(self, call_id: str, event: Event) -> Applied | None:
        """Apply `event` atomically: two processes changing one call see each other's change
        (the second `accept` gets `conflict`). None for no such call; `CallError` from the
        event passes through and changes nothing. A call the event ends loses its timers. The
        event's sends to devices on other processes go with the change; those here are the
        caller's to deliver."""

    async def calls_of(self, user_ids: Iterable[str]) -> list[ServerCall]:
        """The calls these users are parties of, live or ended lately, oldest first."""

    async def live(self) -> list[ServerCall]: ...

    async def live_count(self) -> int: ...


class Timers(Protocol):
    """Timers by name (`ring:`/`max:` + call id, `grace:`/`media:` + device), fired once, on
    one process, through the `Local` side's `timer_due`."""

    async def schedule(self, due: dict[str, float]) -> None:
        """Each key fires at its time (a key scheduled again moves)."""

    async def cancel(self, *keys: str) -> None: ...


class Failures(Protocol):
    """Failed sign-ins per key (an address, a user id) within a sliding window: a key that has
    failed `limit` times is refused until its oldest failure leaves the window."""

    async def blocked_for(self, key: str, limit: int, window_s: float) -> float:
        """Seconds until `key` may try again; 0 when it may try now."""

    async def fail(self, key: str, limit: int, window_s: float) -> None: ...


class Backplane(Protocol):
    """Reaching devices connected to other processes (in memory there are none). A call's
    messages travel with its steps (`CallRegistry.add` and `change`)."""

    def kick(self, device: DeviceRef, process: str, code: int, reason: str) -> None: ...

    async def ask(self, device: DeviceRef, kind: str, timeout_s: float, body: dict[str, Any]) -> dict[str, Any]:
        """A request to a device on another process: its reply, TimeoutError, or LookupError
        if it is connected nowhere."""

    def broadcast(self, event: dict[str, Any]) -> None:
        """A site event (JSON) for the integrations that run on one process of many."""


class Lease(Protocol):
    """A job only one process does at a time (the MQTT bridge): held while this process keeps
    renewing it, taken over by another within seconds of its death."""

    async def acquire(self) -> None:
        """Wait until this process holds the lease."""

    async def lost(self) -> None:
        """Return once this process no longer holds it."""

    async def release(self) -> None: ...


class Local(Protocol):
    """What a backend asks of this process: its own devices, and the call service."""

    def deliver_local(self, device: DeviceRef, message: dict[str, Any]) -> None: ...

    def kick_local(self, device: DeviceRef, code: int, reason: str) -> None: ...

    async def ask_local(self, device: DeviceRef, kind: str, timeout_s: float, body: dict[str, Any]) -> dict[str, Any]:
        ...

    def local_devices(self) -> list[DeviceRef]: ...

    def is_local(self, device: DeviceRef) -> bool:
        """Whether the device is connected to this process."""

    async def timer_due(self, key: str) -> None: ...

    async def device_gone(self, device: DeviceRef) -> None: ...

    def broadcast_received(self, event: dict[str, Any]) -> None: ...


@dataclass(frozen=True)
class Stopping:
    """What a stopping process does with its calls and connections: alone, its calls end (so
    their records are complete); in a cluster they live on in Redis, and its devices are told
    to come back (1012) to another process within their grace."""
    end_calls: bool
    close_code: int
    close_reason: str


class State(Protocol):
    """One backend: the interfaces above, and its life."""

    @property
    def presence(self) -> Presence: ...

    @property
    def calls(self) -> CallRegistry: ...

    @property
    def timers(self) -> Timers: ...

    @property
    def failures(self) -> Failures: ...

    @property
    def backplane(self) -> Backplane: ...

    @property
    def stopping(self) -> Stopping: ...

    async def start(self, local: Local) -> None: ...

    async def close(self) -> None: ...

    def lease(self, name: str) -> Lease: ...

    def health(self) -> tuple[str | None, dict[str, Any]]:
        """Why this process is not ready, if so (None: ready), and what /healthz adds."""
