"""The numbers a benchmark reports, and where they are read from (Linux's /proc).

Percentiles are nearest-rank over the samples taken, so p99 of 100 presses is the 99th
slowest, not an interpolation; with fewer than 100 samples it is the maximum.
"""

from __future__ import annotations

import math
import os
import platform
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def percentile(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def summary(samples: list[float], digits: int = 1) -> dict[str, Any]:
    """{n, p50, p99, max} of samples (ms unless said otherwise); n 0 when nothing was measured."""
    if not samples:
        return {"n": 0, "p50": None, "p99": None, "max": None}
    return {"n": len(samples), "p50": round(percentile(samples, 50), digits),
            "p99": round(percentile(samples, 99), digits), "max": round(max(samples), digits)}


@dataclass
class CpuTimes:
    """A process's CPU seconds, in total and by kernel thread name."""

    total: float
    by_thread: dict[str, float]


def cpu_times(pid: int) -> CpuTimes:
    by_thread: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue  # the thread ended while we looked
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        seconds = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime
        by_thread[name] = by_thread.get(name, 0.0) + seconds
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    # The process's own counters include threads that have already exited.
    total = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return CpuTimes(total, by_thread)


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS (now), VmHWM (the peak since the process started) and RssAnon (the process's own
    memory, without the shared libraries' pages it has touched), in KiB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon"):
            out[key] = int(value.split()[0])
    return out


def reset_peak_rss(pid: int) -> bool:
    """Start VmHWM again from the current RSS (Linux 4.0+), so a peak belongs to one phase."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def machine() -> dict[str, Any]:
    """What the figures were measured on, for the results and the README."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "Model")):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kib = 0
    try:
        mem_kib = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))  # type: ignore[union-attr]
    except (OSError, AttributeError):
        pass
    versions = {}
    for package in ("aiortc", "aiohttp", "av"):
        try:
            from importlib.metadata import version
            versions[package] = version(package)
        except Exception:  # noqa: BLE001 - a missing version is not worth failing a run
            versions[package] = "?"
    commit = ""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                check=False, cwd=Path(__file__).parent).stdout.strip()
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(mem_kib / 2**20, 1),
            "kernel": platform.release(), "python": platform.python_version(), "versions": versions,
            "commit": commit}
