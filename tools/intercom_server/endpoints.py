"""The devices connected to this process, whatever carries them: each is an `Endpoint`
(`state.py`), rung and asked through it. A WebSocket is one kind (`connection.py`); anything
else that can send and be sent messages (a bridge's leg, a test's loopback) is another, and
the call service does not tell them apart."""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Iterator
from typing import Any

from intercom_protocol.calls import DeviceRef, Send

from .connection import ConnectionGone
from .state import Endpoint


class LocalEndpoints:
    def __init__(self, spawn: Callable[[Coroutine[Any, Any, Any]], None]) -> None:
        self._spawn = spawn
        self._by_device: dict[DeviceRef, Endpoint] = {}
        #: call id -> messages from other processes about a call whose caller is still
        #: waiting for its `ok` here (`hold`).
        self._held: dict[str, list[tuple[DeviceRef, dict[str, Any]]]] = {}

    def __contains__(self, device: object) -> bool:
        return device in self._by_device

    def __iter__(self) -> Iterator[DeviceRef]:
        return iter(list(self._by_device))

    def __len__(self) -> int:
        return len(self._by_device)

    def get(self, device: DeviceRef) -> Endpoint | None:
        return self._by_device.get(device)

    def all(self) -> list[Endpoint]:
        return list(self._by_device.values())

    def attach(self, endpoint: Endpoint) -> Endpoint | None:
        """The endpoint's device is here now; returns the endpoint it replaces, if any, which
        no longer stands for the device (its closing changes nothing)."""
        assert endpoint.device is not None
        previous = self._by_device.get(endpoint.device)
        self._by_device[endpoint.device] = endpoint
        if previous is None or previous is endpoint:
            return None
        previous.device = None
        return previous

    def detach(self, endpoint: Endpoint) -> DeviceRef | None:
        """The endpoint's device, if it still stood for it here (and no longer does)."""
        device = endpoint.device
        if device is None or self._by_device.get(device) is not endpoint:
            return None
        del self._by_device[device]
        return device

    def deliver(self, sends: list[Send]) -> None:
        for send in sends:
            target = self._by_device.get(send.to)
            if target is not None:
                target.send(send.message)

    # -- what another process of the cluster asks of this one ---------------------------------

    def hold(self, call_id: str) -> None:
        """Messages from other processes about this call wait until `release`: its first
        messages go out with it before its caller, here, has the `ok` that tells it the
        call's id, and a device drops events of a call it does not know."""
        self._held[call_id] = []

    def release(self, call_id: str) -> None:
        for device, message in self._held.pop(call_id, ()):
            self.deliver_local(device, message)

    def deliver_local(self, device: DeviceRef, message: dict[str, Any]) -> None:
        if self._held:
            call_id = message.get("call_id")
            held = self._held.get(call_id) if isinstance(call_id, str) else None
            if held is not None:
                held.append((device, message))
                return
        target = self._by_device.get(device)
        if target is not None:
            target.send(message)

    def kick_local(self, device: DeviceRef, code: int, reason: str) -> None:
        """The device signed in again on another process: this endpoint of it goes, without
        the grace a lost connection gets (the device is right there, elsewhere)."""
        target = self._by_device.pop(device, None)
        if target is not None:
            target.device = None
            self._spawn(target.close(code, reason))

    async def ask_local(self, device: DeviceRef, kind: str, timeout_s: float, body: dict[str, Any]) -> dict[str, Any]:
        target = self._by_device.get(device)
        if target is None:
            raise ConnectionGone()
        return await target.request(kind, timeout_s, **body)

    def local_devices(self) -> list[DeviceRef]:
        return list(self._by_device)

    def bridges(self) -> list[dict[str, str]]:
        """The bridges connected to this process and what they last said of themselves."""
        return [{"user_id": d.user_id, "device_id": d.device_id, **e.bridge}
                for d, e in self._by_device.items() if e.bridge is not None]
