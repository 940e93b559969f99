"""The door's pins through gpiozero: the bell button and the status LED.

The backend is a gpiozero pin factory named in the YAML: `lgpio` on a Pi, `mock` in the
simulation and the tests. gpiozero calls back on the thread that saw the edge (lgpio's
thread on a Pi), so presses are handed to the event loop with `call_soon_threadsafe`.
"""

from __future__ import annotations

import asyncio
import logging
from importlib.metadata import entry_points
from typing import Any, Callable

from gpiozero import LED, Button, Factory

log = logging.getLogger("intercom.pins")

# LED pattern per door state: (on seconds, off seconds), or steady on/off.
PATTERNS: dict[str, tuple[float, float] | bool] = {
    "idle": True,
    "calling": (0.2, 0.2),
    "connected": True,
    "offline": (0.1, 1.9),
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
        self.led: LED | None = None
        if config["status_led"] is not None:
            self.led = LED(config["status_led"], active_high=config["status_led_active_high"], pin_factory=self.factory)
        self.pattern = "off"

    def _pressed(self) -> None:
        # Any thread: count here, act on the loop.
        self.presses += 1
        self._loop.call_soon_threadsafe(self._on_press)

    def show(self, pattern: str) -> None:
        if pattern == self.pattern:
            return
        self.pattern = pattern
        if self.led is None:
            return
        shape = PATTERNS[pattern]
        if shape is True:
            self.led.on()
        elif shape is False:
            self.led.off()
        else:
            self.led.blink(on_time=shape[0], off_time=shape[1], background=True)

    def simulate(self, pressed: bool) -> dict[str, Any]:
        """Press or release the bell as a finger would: through the pin when it is simulated,
        so the same gpiozero callback runs; straight to the press handler on real pins."""
        if self.backend == "mock":
            pin = self.factory.pin(self._bell_pin)
            level_low = pressed == self._pull_up
            pin.drive_low() if level_low else pin.drive_high()  # type: ignore[attr-defined]
        elif pressed:
            self._pressed()
        return {"pressed": pressed}

    def state(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "bell_pressed": bool(self.button.is_pressed),
            "presses": self.presses,
            "status_led": None if self.led is None else {"pattern": self.pattern, "lit": bool(self.led.is_lit)},
        }

    def close(self) -> None:
        self.button.close()
        if self.led is not None:
            self.led.close()
