"""The hardware libraries a configuration needs, and how to get each on Raspberry Pi OS.

The backends are imported only when the door starts (picamera2 cannot even import without
libcamera), so a valid YAML naming a library this machine lacks used to end in a traceback.
`check-config`, `run` and `selftest` ask here first and say, in one line, what to install.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from .config import DoorConfig

#: Raspberry Pi OS packages its Python libraries for the hardware as Debian packages; a venv
#: sees them only when made with --system-site-packages.
_VENV = "and make the venv with --system-site-packages"

_PIN_LIBRARIES = {
    "lgpio": ("lgpio", f"sudo apt install python3-lgpio {_VENV} (or pip install lgpio)"),
    "rpigpio": ("RPi.GPIO", f"sudo apt install python3-rpi-lgpio {_VENV} (or pip install RPi.GPIO)"),
    "pigpio": ("pigpio", f"sudo apt install python3-pigpio pigpiod {_VENV}, and start pigpiod"),
}


@dataclass(frozen=True)
class Missing:
    key: str  # the YAML key that asks for the library
    value: str
    module: str
    fix: str

    def __str__(self) -> str:
        return (f"{self.key} is {self.value}, but the {self.module} library is not installed here; on Raspberry "
                f"Pi OS: {self.fix}")


def missing(config: DoorConfig) -> list[Missing]:
    found: list[Missing] = []
    backend = config.pins["backend"]
    if backend in _PIN_LIBRARIES:
        module, fix = _PIN_LIBRARIES[backend]
        if not _installed(module):
            found.append(Missing("hardware.pins.backend", backend, module,
                                 f"{fix}; without a Pi, backend: mock simulates the pins"))
    if config.camera["backend"] == "picamera2" and not _installed("picamera2"):
        found.append(Missing("hardware.camera.backend", "picamera2", "picamera2",
                             f"sudo apt install python3-picamera2 {_VENV} (pip cannot install libcamera); "
                             f"without a Pi camera, backend: test_pattern"))
    if not _installed("alsaaudio"):  # the speaker is always ALSA
        found.append(Missing("hardware.speaker.device", config.speaker_device, "alsaaudio (pyalsaaudio)",
                             f"sudo apt install python3-alsaaudio {_VENV}, or pip install 'intercom[door]' "
                             f"(which builds it with libasound2-dev)"))
    if config.rtsp is not None:
        gst = _gst_rtsp_server()
        if gst is not None:
            found.append(Missing("rtsp", "configured", gst, "sudo apt install gir1.2-gst-rtsp-server-1.0 "
                                 "gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad, and "
                                 "pip install 'intercom[rtsp]' (or python3-gi with --system-site-packages)"))
    return found


def _gst_rtsp_server() -> str | None:
    """What of GStreamer's RTSP server is missing, or None. Asked only when `rtsp:` is set."""
    if not _installed("gi"):
        return "gi (PyGObject)"
    try:
        import gi

        for name in ("Gst", "GstRtsp", "GstRtspServer"):
            gi.require_version(name, "1.0")
    except ImportError:
        return "gi (PyGObject)"
    except ValueError:
        return f"GStreamer's RTSP server ({name})"
    return None


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:  # a dotted name whose parent package is missing
        return False
