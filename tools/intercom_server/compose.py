"""Where the server is composed: the one place that reads `cluster:` and picks the state
backend every other module sees only through `state.py`'s interfaces."""

from __future__ import annotations

from .cluster import ClusterSettings, RedisState
from .memory import MemoryState
from .settings import HubSettings
from .state import State


def make_state(settings: HubSettings, cluster: ClusterSettings | None) -> State:
    """In memory for one process; in Redis for one of several (`docs/cluster.md`)."""
    if cluster is None:
        return MemoryState()
    # A live call is kept a minute past the longest it may last; its timers end it before.
    return RedisState(cluster, live_ttl_s=settings.max_duration_s + 60)
