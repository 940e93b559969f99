"""Where a call's CPU goes at the door, by stage: one pass-through call sampled by py-spy.

The cost phase says how much a call costs; this says what for, so that work on the door's
hot paths starts from a measurement. py-spy samples the door's process from outside without
pausing it, and only the thread holding the GIL at each sample, so C called without releasing
the GIL (Opus, SRTP, numpy) counts for the Python that called it. Each sample's stack goes to
the first stage one of whose patterns it contains, innermost frame first. A stage's share of
the samples, times the door's CPU measured from /proc over the same span, estimates its cost
in % of a core. Threads are named as the kernel knows them (`camera`, `alsa-playback`), else
as Python does (aiortc's `audio-decoder`).

The simulated camera's thread (drawing the test pattern, libx264) is left out of the door's
share, as in the cost phase: on a Pi the ISP and the hardware encoder do that work. The raw
stacks are kept (`door.raw`, py-spy's collapsed format) for a flame graph.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .figures import cpu_times
from .scene import Bell, camera, installation

#: (stage, substrings of a frame that place a sample in it), tried innermost frame outwards,
#: then in this order. Frames look like "function (path/file.py:line)" or a native symbol.
#: py-spy samples the door without pausing it, and only threads holding the GIL: what the door's
#: Python (and the C it calls without releasing the GIL) spends, not threads waiting for it.
PYSPY_MODE = ["--threads", "--nonblocking", "--gil"]
#: (stage, substrings of a frame that place a sample in it), tried innermost frame outwards,
#: then in this order. Frames look like "function (path/file.py:line)".
STAGES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("the outgoing audio level (RFC 6465)", ("compute_audio_level_dbov", "audio_level_dbov")),
    ("Opus encoding (the door's voice)", ("OpusEncoder.encode", "VoiceEncoder.encode")),
    ("Opus decoding (the resident's voice)", ("OpusDecoder.decode", "decoder_worker")),
    ("the echo canceller", ("intercom/media/echo.py",)),
    ("the simulated microphone (drawing its tone)", ("ToneTrack.samples", "_tone_frame", "ToneTrack.recv")),
    ("the speaker (mixdown, level, mixing, writing)", ("Speaker.", "Mixdown.", "stereo_to_mono", "level_dbfs",
                                             "intercom/media/audio.py")),
    ("SRTP protect and unprotect", ("pylibsrtp",)),
    ("packing H.264 into RTP", ("codecs/h264.py",)),
    ("the camera's frames to the call (fan-out)", ("intercom/media/video.py", "intercom/media/camera.py")),
    ("RTP sending (packets, header extensions, clock)", ("rtcrtpsender.py", "rtp.py:", "aiortc/clock.py",
                                                         "intercom/media/voice.py")),
    ("RTP receiving (jitter buffer, statistics)", ("rtcrtpreceiver.py", "jitterbuffer.py", "rtcdtlstransport.py")),
    ("UDP and ICE (sockets, aioice)", ("aioice", "selector_events.py", "sendto", "datagram")),
    ("RTCP", ("rtcp",)),
    ("the event loop (scheduling, tasks, queues)", ("asyncio/", "uvloop", "Runner.run", "base_events.py")),
)
OTHER = "other"
CAMERA_THREAD = "camera"


@dataclass
class Profile:
    """Samples by stage (the door's threads) and by thread; `rate` samples a second, over `seconds`."""

    rate: int
    seconds: float
    by_stage: Counter[str]
    by_thread: Counter[str]

    def percent_of_core(self, samples: int) -> float:
        return round(100 * samples / (self.rate * self.seconds), 1)


def stage_of(frames: list[str]) -> str:
    """The stage of one stack, given outermost frame first (as py-spy's raw format writes it)."""
    for frame in reversed(frames):
        for stage, patterns in STAGES:
            if any(p in frame for p in patterns):
                return stage
    return OTHER


def parse_raw(text: str, thread_names: dict[int, str], rate: int, seconds: float) -> Profile:
    """py-spy's `--format raw` output (one "frame;frame;... count" per line, the first frame
    naming the thread when `--threads` is given)."""
    by_stage: Counter[str] = Counter()
    by_thread: Counter[str] = Counter()
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        thread = _thread_name(frames[0], thread_names)
        by_thread[thread] += count
        if thread != CAMERA_THREAD:
            by_stage[stage_of(frames[1:])] += count
    return Profile(rate, seconds, by_stage, by_thread)


_THREAD = re.compile(r"thread \((0x[0-9a-fA-F]+|\d+)\)(?::\s*(.*))?")


def _thread_name(first: str, names: dict[int, str]) -> str:
    """The kernel's name for the thread (the door names its hardware threads), else Python's
    (aiortc's decoder threads, the executor's workers)."""
    match = _THREAD.search(first)
    if match is None:
        return first
    tid = int(match.group(1), 0)
    kernel = names.get(tid)
    if kernel and kernel != names.get(-1):
        return kernel
    return (match.group(2) or kernel or first).strip()


def _thread_names(pid: int) -> dict[int, str]:
    names = {-1: Path(f"/proc/{pid}/comm").read_text().strip()}  # the process's own: unnamed threads
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            names[int(task.name)] = (task / "comm").read_text().strip()
        except OSError:
            continue
    return names


def py_spy() -> str | None:
    """py-spy from the bench's own environment (the test extra installs it), else the PATH."""
    here = Path(sys.executable).parent / "py-spy"
    return str(here) if here.exists() else shutil.which("py-spy")


async def record(pid: int, seconds: float, out: Path, rate: int = 500) -> Profile:
    """Sample the door for `seconds`; the raw stacks are kept in `out` for a flame graph."""
    exe = py_spy()
    if exe is None:
        raise RuntimeError("py-spy is not installed: `make bench` installs it with the test extra")
    names = _thread_names(pid)
    proc = await asyncio.create_subprocess_exec(
        exe, "record", "--pid", str(pid), "--duration", f"{seconds:g}", "--rate", str(rate), "--format", "raw",
        *PYSPY_MODE, "--output", str(out),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate()
    if proc.returncode != 0 or not out.exists():
        raise RuntimeError(f"py-spy failed: {err.decode(errors='replace').strip()[-400:]}")
    names.update(_thread_names(pid))
    return parse_raw(out.read_text(), names, rate, seconds)


async def profile_call(root: Path, seconds: float, width: int = 1280, height: int = 720,
                       fps: float = 30, rate: int = 500) -> dict[str, Any]:
    """One pass-through call of `seconds`, profiled after its first frame; the door's CPU over
    the same span from /proc, to set the profile's shares against."""
    root.mkdir(parents=True, exist_ok=True)
    async with installation(root) as site:
        resident = await site.start_resident("alice", "--hangup-after", f"{seconds + 2:g}",
                                             "--hangup-after-frames", "0")
        door = await site.start_door("door-profiled", [{"residents": ["alice"]}],
                                     settings=camera(width, height, fps))
        pid = door.process.proc.pid
        bell = Bell(door)
        try:
            mark = len(resident.lines)
            await bell.press()
            await resident.wait_for_event("first_frame", 20, after=mark)
            before, started = cpu_times(pid), time.monotonic()
            profile = await record(pid, seconds, root / "door.raw", rate)
            after, elapsed = cpu_times(pid), time.monotonic() - started
            await resident.wait_for_event("ended", seconds + 20, after=mark)
            await bell.until_idle()
            await bell.release()
        finally:
            bell.close()
            await site.stop(door.process)
    camera_s = after.by_thread.get(CAMERA_THREAD, 0.0) - before.by_thread.get(CAMERA_THREAD, 0.0)
    door_percent = 100 * (after.total - before.total - camera_s) / elapsed
    sampled = sum(profile.by_stage.values())
    stages = [{"stage": stage, "samples": n, "share_percent": round(100 * n / max(sampled, 1), 1),
               "percent_of_core": round(door_percent * n / max(sampled, 1), 2)}
              for stage, n in profile.by_stage.most_common()]
    threads = {name: profile.percent_of_core(n) for name, n in profile.by_thread.most_common()}
    return {"camera": f"{width}x{height} at {fps:g} fps, pass-through", "seconds": seconds,
            "rate_hz": profile.rate, "door_percent": round(door_percent, 1), "samples": sampled,
            "stages": stages, "gil_percent_by_thread": threads, "raw": str(root / "door.raw")}
