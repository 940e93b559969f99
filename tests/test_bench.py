"""The benchmarks run: `intercom-bench --quick` goes through every part with tiny counts and
writes its results. Timing is not asserted here (the figures are for reading, in
bench/results.md); what is asserted is that each part measured what it says it measures."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import sys

import pytest

from intercom_bench.figures import percentile, summary
from intercom_bench.report import TARGETS, markdown

# A loaded two-core machine (CI beside stress-ng) takes about 300 s: PostgreSQL and a cluster of
# three behind HAProxy start on top of the single-process parts.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(560)]


def test_percentiles_are_nearest_rank():
    samples = list(range(1, 101))  # 1..100
    assert percentile(samples, 50) == 50 and percentile(samples, 99) == 99 and percentile(samples, 100) == 100
    assert summary([3.0, 1.0, 2.0]) == {"n": 3, "p50": 2.0, "p99": 3.0, "max": 3.0}
    assert summary([]) == {"n": 0, "p50": None, "p99": None, "max": None}


async def test_quick_bench_runs_every_part_and_writes_results(tmp_path):
    # As `make bench` runs it: the output directory relative to where it was started.
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "intercom_bench.cli", "--quick", "--out", "bench", cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 540)
    assert proc.returncode == 0, err.decode()[-3000:]
    results = json.loads((tmp_path / "bench" / "results.json").read_text())
    table = (tmp_path / "bench" / "results.md").read_text()
    assert table == markdown(results) and out.decode().startswith("# Intercom benchmarks")

    press = results["press_to_ring"]
    assert press["press_to_ring_ms"]["n"] == 3 and press["press_to_picture_ms"]["n"] == 3
    # The phone rings before the picture arrives: the dial no longer waits for the camera.
    assert press["rang_before_picture"] == 3 and press["press_to_dial_sent_ms"]["n"] == 3

    if importlib.util.find_spec("pjsua2") is not None:  # the SIP part's phones (x86_64 only)
        sip = results["sip"]
        # Both phones rang at each press (one per codec), and each answer was heard and costed.
        assert sip["press_to_invite_sent_ms"]["n"] == 4
        for codec in ("g722", "pcmu"):
            assert sip["answer_to_phone_hears_door_ms"][codec]["n"] == 1
            assert 0 < sip["gateway_cpu_percent_per_call"][codec]["p50"] < 200
        assert "press to the INVITE leaving the SIP gateway" in table

    if importlib.util.find_spec("gi") is not None:  # GStreamer's RTSP server
        served = results["rtsp"]
        assert served["first_keyframe_ms"]["n"] == 3 and served["first_keyframe_ms"]["p50"] > 0
        assert all(0 < served["door_percent_beside_a_call"][n] < 200 for n in ("0", "1", "3"))
        assert "RTSP viewers beside a call" in table

    answer = results["answer_to_first_frame"]
    assert answer["passthrough"]["n"] == 2 and answer["vp8"]["n"] == 2

    cost = results["call_cost"]
    assert [(r["encoding"], r["size"]) for r in cost["runs"]] == [
        ("passthrough", "320x240"), ("vp8", "320x240"), ("h264", "320x240")]
    for run in cost["runs"]:
        assert run["frames_decoded"] > 10, run  # the resident saw the call
        assert run["glass_to_glass_ms"]["n"] > 0 and run["stamps_read"] >= run["frames_decoded"] - 2, run
        assert run["cpu_percent"] > 0 and run["peak_rss_kib"] > 0 and "camera" in run["threads_percent"]
    assert cost["idle_rss_kib"] > 10_000

    message = results["message_cost"]  # a visitor's message was recorded and reached the server
    assert 2.5 <= message["duration_s"] <= 3.5 and message["file_kib"] > 0 and message["cpu_percent"] > 0, message
    assert message["peak_rss_kib"] > 0 and message["camera"].startswith("320x240")

    capacity = results["capacity"]
    assert capacity["idle"]["connections"] == 50 and capacity["idle"]["per_connection_kib"] > 0
    cluster = results["capacity_cluster"]
    assert cluster["processes"] == 3 and cluster["idle"]["connections"] == 50
    assert cluster["idle"]["per_connection_kib"] > 0
    for engine in (capacity, results["capacity_postgresql"], cluster):  # SQLite, PostgreSQL, three processes
        for phase in ("steady", "peak"):
            assert engine["setups"][phase]["calls"] > 0 and engine["setups"][phase]["error_count"] == 0
    assert "call set-up at the server, PostgreSQL, steady" in table
    assert "call set-up at the server, 3 processes behind HAProxy, peak" in table
    for engine in (capacity, cluster):  # both at one rate, for their CPU per call side by side
        assert engine["setups"]["matched"]["calls"] > 0 and engine["setups"]["matched"]["error_count"] == 0
    assert "CPU per call at the same rate offered to both" in table

    pushed = results["push"]
    assert pushed["refused"] == 0, "every push request carried a valid VAPID JWT and a message that decrypts"
    assert pushed["press_to_push_ms"]["n"] == 2 * 100 and pushed["press_to_last_push_ms"]["n"] == 2
    assert pushed["press_to_push_ms"]["p50"] > 0
    assert pushed["cold_start"]["to_first_frame_ms"]["n"] == 1, pushed["cold_start"]

    for target in TARGETS:  # every target was measured, whatever the verdict
        assert target.figure in table and target.verdict(results)[1] != "not run"
