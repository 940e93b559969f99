"""The door's connection to the server: backoff that grows, is capped and is jittered."""

import itertools
import random

from intercom.signaling import backoff_delays


def first(n: int) -> list[float]:
    return list(itertools.islice(backoff_delays(first=0.5, cap=30.0), n))


def test_backoff_doubles_up_to_its_cap(monkeypatch):
    monkeypatch.setattr(random, "uniform", lambda low, high: high)
    assert first(9) == [0.5, 1, 2, 4, 8, 16, 30, 30, 30]


def test_backoff_jitters_between_half_the_first_delay_and_the_bound(monkeypatch):
    bounds: list[tuple[float, float]] = []
    monkeypatch.setattr(random, "uniform", lambda low, high: bounds.append((low, high)) or low)
    assert first(4) == [0.25] * 4
    assert bounds == [(0.25, 0.5), (0.25, 1), (0.25, 2), (0.25, 4)]
