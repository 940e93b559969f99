"""What the gateway needs of a SIP stack, and nothing more: one account that registers, calls
out and is called, and per call its progress, its end with the SIP status, DTMF digits from
the phone and raw PCM both ways.

The stack is chosen once, where the gateway is composed (`baresip_engine.BaresipEngine` in
the product); everything else sees only these interfaces, so a test or another stack can
stand in without a branch elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

#: SIP statuses of a refusal: a phone's busy or decline counts as the resident declining; the
#: gateway itself refuses a caller it does not know (403) or a call it cannot take now (486).
BUSY = 486
DECLINED = 603
FORBIDDEN = 403


@dataclass(frozen=True)
class AccountSettings:
    """The gateway's one SIP identity: an IP phone on a FritzBox, an extension of a PBX, or a
    trunk's account."""

    user: str
    domain: str
    password: str
    registrar: str | None = None
    transport: Literal["udp", "tcp", "tls"] = "udp"
    reg_interval_s: int = 600
    codecs: tuple[str, ...] = ("g722", "pcmu", "pcma", "opus")
    srtp: Literal["off", "optional", "mandatory"] = "optional"
    dtmf: Literal["rtpevent", "info", "auto"] = "rtpevent"
    listen: str | None = None  # host:port for SIP; None: the stack's default
    interface: str | None = None  # the local address for SIP and RTP; None: the stack picks


@dataclass(frozen=True)
class Registration:
    """The account's registration as the gateway last saw it (for `status` and /healthz)."""

    state: Literal["registering", "registered", "failed", "unregistered"]
    detail: str = ""
    status: int | None = None  # the registrar's SIP status, when it answered


@dataclass(frozen=True)
class LegEnd:
    """How a call leg ended: the SIP status when a final answer ended it (486, 603, 487...)."""

    status: int | None
    reason: str


class Leg(Protocol):
    """One SIP call, either direction. Its callbacks run on the gateway's event loop."""

    peer: str  # the far end's URI (the caller's identity for an incoming call)

    def on_answered(self, callback: Callable[[], None]) -> None: ...
    def on_ended(self, callback: Callable[[LegEnd], None]) -> None: ...
    def on_digit(self, callback: Callable[[str], None]) -> None: ...

    async def answer(self) -> None: ...
    async def reject(self, status: int) -> None:
        """Refuse an incoming call with `status` where the stack can (baresip: always 486)."""
        ...
    async def hang_up(self) -> None: ...

    @property
    def sample_rate(self) -> int:
        """The PCM rate both ways (16 kHz for G.722 and 8 kHz for G.711); 0 before media."""
        ...

    def read(self, max_bytes: int) -> bytes:
        """The phone's sound: signed 16-bit mono PCM, what arrived since the last read."""
        ...

    def write(self, pcm: bytes) -> int:
        """Sound for the phone (16-bit mono PCM at `sample_rate`); returns the bytes taken."""
        ...

    @property
    def codec(self) -> str: ...


class Engine(Protocol):
    """A running SIP stack with the gateway's account."""

    async def start(self, on_registration: Callable[[Registration], None],
                    on_incoming: Callable[[Leg], None]) -> None: ...
    async def dial(self, uri: str) -> Leg: ...
    async def close(self) -> None: ...
    def target_uri(self, target: str) -> str:
        """A configured target (`**610`, `+4930...`, `sip:desk@pbx`) as the URI to dial."""
        ...
