"""The door's pins through gpiozero: the bell button, two LEDs and the door-strike relay.

The backend is a gpiozero pin factory named in the YAML: `lgpio` on a Pi, `mock` in the
simulation and the tests. gpiozero calls back on the thread that saw the edge (lgpio's
thread on a Pi), so presses are handed to the event loop with `call_soon_threadsafe`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

from gpiozero import LED, Button, DigitalOutputDevice, Factory

log = logging.getLogger("intercom.pins")

Shape = tuple[float, float] | bool

# Status LED pattern per door state: (on seconds, off seconds), or steady on/off.
PATTERNS: dict[str, Shape] = {
    "idle": True,
    "calling": (0.2, 0.2),
    "connected": True,
    "door_open": (0.05, 0.05),
    "offline": (0.1, 1.9),
    "recording": (1.0, 0.25),  # the visitor's message is being recorded: they can see it
    "off": False,
}

# The button's backlight: lit so a visitor finds it at night, breathing while it rings. It
# stays lit when the server is unreachable, because the bell still chimes then.
BACKLIGHT: dict[str, Shape] = {
    "idle": True,
    "calling": (0.6, 0.6),
    "connected": True,
    "door_open": True,
    "offline": True,
    "recording": True,
    "off": False,
}


def make_factory(name: str) -> Factory:
    """A gpiozero pin factory by its registered name (the same names GPIOZERO_PIN_FACTORY takes)."""
    found = entry_points(group="gpiozero_pin_factories", name=name)
    if not found:
        raise ValueError(f"gpiozero has no pin factory '{name}'")
    return next(iter(found)).load()()


class Pins:
    def __init__(self, config: dict[str, Any], on_press: Callable[[], None], loop: asyncio.AbstractEventLoop,
                 factory: Factory | None = None) -> None:
        self.backend = config["backend"]
        self.factory = factory or make_factory(self.backend)
        self._pull_up = config["bell_pull_up"]
        self._bell_pin = config["bell_button"]
        self._on_press = on_press
        self._loop = loop
        self.presses = 0
        self.button = Button(self._bell_pin, pull_up=self._pull_up, bounce_time=config["bell_bounce_s"] or None,
                             pin_factory=self.factory)
        self.button.when_pressed = self._pressed
        self.button.when_released = self._edge
        self._bounce_s = config["bell_bounce_s"] or 0.0
        self._last_edge = float("-inf")
        self.led: LED | None = None
        if config["status_led"] is not None:
            self.led = LED(config["status_led"], active_high=config["status_led_active_high"], pin_factory=self.factory)
        self.backlight: LED | None = None
        if config.get("backlight_led") is not None:
            self.backlight = LED(config["backlight_led"], active_high=config["backlight_active_high"],
                                 pin_factory=self.factory)
        self.relay: DigitalOutputDevice | None = None
        if config.get("relay") is not None:
            self.relay = DigitalOutputDevice(config["relay"], active_high=config["relay_active_high"],
                                             initial_value=False, pin_factory=self.factory)
        self.relay_pulse_s: float = config.get("relay_pulse_s", 3.0)
        self.relay_pulses = 0
        self._relay_off: asyncio.TimerHandle | None = None
        self.pattern = "off"

    def _edge(self) -> bool:
        """Note an edge; True when the contact had been quiet for the bounce time before it.

        lgpio filters bounces itself, but gpiozero's mock and native factories only store the
        bounce time, so the filter is here too: a chattering contact is one press everywhere."""
        now = time.monotonic()
        quiet = now - self._last_edge >= self._bounce_s
        self._last_edge = now
        return quiet

    def _pressed(self) -> None:
        # gpiozero's thread: count here, act on the loop.
        if not self._edge():
            return
        self.presses += 1
        self._loop.call_soon_threadsafe(self._on_press)

    def show(self, pattern: str) -> None:
        if self.door_open and pattern != "off":
            pattern = "door_open"
        if pattern == self.pattern:
            return
        self.pattern = pattern
        _drive(self.led, PATTERNS[pattern])
        _drive(self.backlight, BACKLIGHT[pattern])

    # -- the door strike -----------------------------------------------------------------------

    @property
    def door_open(self) -> bool:
        return self.relay is not None and bool(self.relay.value)

    def pulse_relay(self, on_done: Callable[[], None] | None = None) -> float:
        """Energise the strike for the configured pulse; a second opening during a pulse
        extends it. Timed on the event loop, so a stop() always releases it. Returns the pulse."""
        if self.relay is None:
            raise RuntimeError("no relay is configured (hardware.pins.relay)")
        self.relay.on()
        self.relay_pulses += 1
        if self._relay_off is not None:
            self._relay_off.cancel()

        def release() -> None:
            self._relay_off = None
            if self.relay is not None:
                self.relay.off()
            if on_done is not None:
                on_done()

        self._relay_off = self._loop.call_later(self.relay_pulse_s, release)
        return self.relay_pulse_s

    def simulate(self, pressed: bool) -> dict[str, Any]:
        """Press or release the bell as a finger would: through the pin when it is simulated,
        so the same gpiozero callback runs; straight to the press handler on real pins."""
        if self.backend == "mock":
            pin = self.factory.pin(self._bell_pin)
            level_low = pressed == self._pull_up
            pin.drive_low() if level_low else pin.drive_high()
        elif pressed:
            self._pressed()
        return {"pressed": pressed}

    def state(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "bell_pressed": bool(self.button.is_pressed),
            "presses": self.presses,
            "status_led": None if self.led is None else {"pattern": self.pattern, "lit": bool(self.led.is_lit)},
            "backlight": None if self.backlight is None else {"lit": bool(self.backlight.is_lit)},
            "relay": None if self.relay is None else {"energised": self.door_open, "pulses": self.relay_pulses,
                                                      "pulse_s": self.relay_pulse_s},
        }

    def close(self) -> None:
        """Release every pin; the strike is de-energised first, whatever was happening."""
        if self._relay_off is not None:
            self._relay_off.cancel()
        if self.relay is not None:
            self.relay.off()
        for device in (self.relay, self.button, self.led, self.backlight):
            if device is not None:
                device.close()


def _drive(led: LED | None, shape: Shape) -> None:
    if led is None:
        return
    if shape is True:
        led.on()
    elif shape is False:
        led.off()
    else:
        led.blink(on_time=shape[0], off_time=shape[1], background=True)
