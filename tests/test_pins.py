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
    pins.show("calling")  # blinking: the pin toggles on gpiozero's own thread
    toggles = set()
    deadline = asyncio.get_running_loop().time() + 2
    while len(toggles) < 2 and asyncio.get_running_loop().time() < deadline:
        toggles.add(led_pin.state)
        await asyncio.sleep(0.01)
    assert toggles == {True, False}
    assert pins.state()["status_led"]["pattern"] == "calling"
    pins.close()


async def test_an_active_low_led_is_driven_low_to_light(factory):
    pins = Pins({**CONFIG, "status_led_active_high": False}, lambda: None, asyncio.get_running_loop(), factory=factory)
    pins.show("connected")
    assert factory.pin(27).state is False and pins.state()["status_led"]["lit"] is True
    pins.close()
