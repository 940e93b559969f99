"""Which camera backend the installer chose: the one place that knows them all, so the
interface (`camera.py`) imports none of its backends and none of them imports this."""

from __future__ import annotations

from typing import Any

from .camera import EncodedCamera


def make_camera(config: dict[str, Any]) -> EncodedCamera:
    """The backend the installer chose (`hardware.camera` in the YAML); each is imported only
    when chosen."""
    size = (config["width"], config["height"], config["fps"], config["bitrate"], config["iperiod"])
    backend = config["backend"]
    if backend == "picamera2":
        from .picamera import Picamera2Camera

        return Picamera2Camera(*size)
    encoding = config.get("encoding", "passthrough")
    if backend == "v4l2":
        from .v4l2 import V4l2Camera

        return V4l2Camera(config["device"], *size, container_format=config["format"],
                          input_format=config["input_format"], encoding=encoding)
    from .testpattern import TestPatternCamera

    return TestPatternCamera(*size, encoding=encoding)
