"""The bell and the LED through gpiozero's MockFactory: the simulated pins the demo uses."""

import asyncio
import threading

import pytest
from gpiozero import Device
from gpiozero.pins.mock import MockFactory

from intercom.pins import Pins

CONFIG = {"backend": "mock", "bell_button": 17, "bell_pull_up": True, "bell_bounce_s": None,
          "status_led": 27, "status_led_active_high": True}


@pytest.fixture
def factory():
    factory = MockFactory()
    yield factory
    factory.reset()
    Device.pin_factory = None


async def blinks(pin, within_s: float = 3.0) -> bool:
    """True once the pin has been seen both on and off: gpiozero blinks it on its own thread,
    so the test samples the level until it has seen both, or gives up."""
    seen = set()
    deadline = asyncio.get_running_loop().time() + within_s
    while len(seen) < 2 and asyncio.get_running_loop().time() < deadline:
        seen.add(pin.state)
        await asyncio.sleep(0.01)
    return seen == {True, False}


async def test_a_press_on_the_pin_reaches_the_event_loop_from_any_thread(factory):
    loop = asyncio.get_running_loop()
    pressed = asyncio.Event()
    seen_on: list[threading.Thread] = []

    def on_press() -> None:
        seen_on.append(threading.current_thread())
        pressed.set()

    pins = Pins(CONFIG, on_press, loop, factory=factory)
    # gpiozero calls back on the thread that changed the pin; on a Pi that is lgpio's.
    worker = threading.Thread(target=factory.pin(17).drive_low)
    worker.start()
    worker.join()
    await asyncio.wait_for(pressed.wait(), 2)
    assert seen_on == [threading.main_thread()]
    assert pins.state()["bell_pressed"] and pins.presses == 1
    factory.pin(17).drive_high()
    assert not pins.state()["bell_pressed"]
    pins.close()


async def test_simulated_press_goes_through_gpiozero_like_a_finger(factory):
    pressed = asyncio.Event()
    pins = Pins(CONFIG, pressed.set, asyncio.get_running_loop(), factory=factory)
    pins.simulate(True)
    await asyncio.wait_for(pressed.wait(), 2)
    assert factory.pin(17).state is False  # pulled low, as a button to ground does
    pins.simulate(False)
    assert factory.pin(17).state is True and pins.presses == 1
    pins.close()


async def test_led_patterns_follow_the_door_state(factory):
    pins = Pins(CONFIG, lambda: None, asyncio.get_running_loop(), factory=factory)
    led_pin = factory.pin(27)
    pins.show("idle")
    assert led_pin.state is True
    pins.show("off")
    assert led_pin.state is False
    pins.show("calling")
    assert await blinks(led_pin)
    assert pins.state()["status_led"]["pattern"] == "calling"
    pins.close()


async def test_an_active_low_led_is_driven_low_to_light(factory):
    pins = Pins({**CONFIG, "status_led_active_high": False}, lambda: None, asyncio.get_running_loop(), factory=factory)
    pins.show("connected")
    assert factory.pin(27).state is False and pins.state()["status_led"]["lit"] is True
    pins.close()


RELAY = {**CONFIG, "relay": 22, "relay_active_high": True, "relay_pulse_s": 0.2,
         "backlight_led": 23, "backlight_active_high": True}


async def test_the_relay_pulses_for_the_configured_time_then_releases(factory):
    pins = Pins(RELAY, lambda: None, asyncio.get_running_loop(), factory=factory)
    pins.show("connected")
    strike = factory.pin(22)
    assert strike.state is False and not pins.door_open
    released = asyncio.Event()
    started = asyncio.get_running_loop().time()
    assert pins.pulse_relay(on_done=released.set) == 0.2
    assert strike.state is True and pins.door_open
    pins.show("connected")  # whatever the call does meanwhile, the LED says the door is open
    assert pins.pattern == "door_open" and factory.pin(23).state is True
    await asyncio.wait_for(released.wait(), 2)
    assert asyncio.get_running_loop().time() - started >= 0.19
    assert strike.state is False and pins.state()["relay"] == {"energised": False, "pulses": 1, "pulse_s": 0.2}
    pins.close()


async def test_a_second_opening_extends_the_pulse_and_close_always_releases(factory):
    pins = Pins({**RELAY, "relay_pulse_s": 5.0}, lambda: None, asyncio.get_running_loop(), factory=factory)
    pins.pulse_relay()
    pins.pulse_relay()
    assert pins.relay_pulses == 2 and factory.pin(22).state is True
    pins.close()  # SIGTERM mid-pulse: the strike must not stay energised
    assert factory.pin(22).state is False


async def test_an_active_low_relay_board_is_driven_low_to_open(factory):
    pins = Pins({**RELAY, "relay_active_high": False}, lambda: None, asyncio.get_running_loop(), factory=factory)
    assert factory.pin(22).state is True  # idle: high, strike released
    pins.pulse_relay()
    assert factory.pin(22).state is False
    pins.close()


async def test_no_relay_configured_means_the_door_cannot_be_opened(factory):
    pins = Pins(CONFIG, lambda: None, asyncio.get_running_loop(), factory=factory)
    with pytest.raises(RuntimeError, match="hardware.pins.relay"):
        pins.pulse_relay()
    assert pins.state()["relay"] is None
    pins.close()


async def test_the_backlight_stays_lit_offline_and_breathes_while_ringing(factory):
    pins = Pins(RELAY, lambda: None, asyncio.get_running_loop(), factory=factory)
    backlight = factory.pin(23)
    pins.show("offline")
    assert backlight.state is True  # the bell still chimes offline: visitors should find it
    pins.show("calling")
    assert await blinks(backlight)
    pins.show("off")
    assert backlight.state is False
    pins.close()


async def test_a_burst_of_contact_bounces_is_one_press(factory):
    presses = []
    pressed = asyncio.Event()

    def on_press() -> None:
        presses.append(1)
        pressed.set()

    pins = Pins({**CONFIG, "bell_bounce_s": 0.05}, on_press, asyncio.get_running_loop(), factory=factory)
    pin = factory.pin(17)
    for _ in range(5):  # a mechanical contact chattering within a few milliseconds
        pin.drive_low()
        pin.drive_high()
    pin.drive_low()
    await asyncio.wait_for(pressed.wait(), 2)
    await asyncio.sleep(0)  # let any further (wrong) presses already queued reach the loop
    assert pins.presses == 1 and presses == [1]
    pins.close()
