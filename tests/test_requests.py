"""The request tracker every party uses: replies matched by id, late replies undone."""

from __future__ import annotations

from intercom_protocol.messages import error, ok
from intercom_protocol.requests import RequestFailed, RequestTracker


def test_each_reply_settles_its_own_request() -> None:
    tracker: RequestTracker[str, str] = RequestTracker("r")
    dial = tracker.start("dial", "dialing task", callees=["alice"])
    end = tracker.start("end", "ending task", call_id="c1")
    assert dial == {"type": "dial", "id": "r1", "callees": ["alice"]} and end["id"] == "r2"
    settled = tracker.settle(ok("r2"))
    assert settled.waiter == "ending task" and settled.ok and settled.failure() is None
    refused = tracker.settle(error("r1", "forbidden", "not yours"))
    assert refused.waiter == "dialing task" and not refused.ok
    failure = refused.failure()
    assert isinstance(failure, RequestFailed) and (failure.code, failure.message) == ("forbidden", "not yours")
    assert len(tracker) == 0
    # The same reply again, or one nobody asked for, settles nothing.
    assert tracker.settle(ok("r2")).waiter is None and tracker.settle(ok("x9")).waiter is None
    assert tracker.settle({"type": "ok"}).waiter is None


def test_an_ok_after_giving_up_goes_to_the_undo_once() -> None:
    tracker: RequestTracker[str, str] = RequestTracker("r")
    late_ok = tracker.start("dial", "task", undo="end the call")["id"]
    late_error = tracker.start("dial", "task", undo="end the call")["id"]
    no_undo = tracker.start("end", "task")["id"]
    for rid in (late_ok, late_error, no_undo):
        tracker.give_up(rid)
    settled = tracker.settle(ok(late_ok, call_id="c7"))
    assert settled.waiter is None and settled.undo == "end the call"
    assert tracker.settle(ok(late_ok)).undo is None  # once
    assert tracker.settle(error(late_error, "conflict", "no")).undo is None  # refused: nothing to take back
    assert tracker.settle(ok(no_undo)).undo is None


def test_giving_up_remembers_a_bounded_number_of_undos() -> None:
    tracker: RequestTracker[str, str] = RequestTracker("r", max_abandoned=2)
    ids = [tracker.start("dial", "task", undo=f"undo {n}")["id"] for n in range(3)]
    for rid in ids:
        tracker.give_up(rid)
    assert tracker.settle(ok(ids[0])).undo is None  # the oldest was forgotten
    assert [tracker.settle(ok(rid)).undo for rid in ids[1:]] == ["undo 1", "undo 2"]


def test_a_closed_connection_answers_nothing_more() -> None:
    tracker: RequestTracker[str, str] = RequestTracker("r")
    first = tracker.start("dial", "a", undo="undo")["id"]
    tracker.give_up(first)
    second = tracker.start("end", "b")["id"]
    unsent = tracker.start("end", "c")["id"]
    tracker.forget(unsent)
    assert tracker.close() == ["b"]
    assert tracker.settle(ok(first)).undo is None and tracker.settle(ok(second)).waiter is None
