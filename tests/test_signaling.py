"""The door's connection to the server: backoff that grows, is capped and is jittered."""

import itertools

from intercom.signaling import backoff_delays


def test_backoff_grows_to_its_cap_with_jitter():
    delays = list(itertools.islice(backoff_delays(first=0.5, cap=30.0), 12))
    assert all(0.25 <= d <= 30.0 for d in delays)
    assert delays[0] <= 0.5  # the first retry is quick
    assert max(delays[8:]) > 5  # later ones back off far
    runs = [list(itertools.islice(backoff_delays(), 8)) for _ in range(3)]
    assert runs[0] != runs[1] != runs[2]  # two doors do not retry in step
