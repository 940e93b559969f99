"""What the server keeps, and what it must never keep."""

import sqlite3
import threading
import time

import pytest

from intercom_protocol.calls import DeviceRef, ServerCall
from intercom_server.store import Store

from .conftest import OFFER


def make_store(tmp_path) -> Store:
    store = Store(tmp_path / "db.sqlite")
    store.add_site("home", "Home")
    store.add_user("alice", "resident", "home", "Alice")
    return store


def test_tokens_are_stored_only_as_hashes(tmp_path):
    store = make_store(tmp_path)
    secret = store.issue_token("alice")["access_token"]
    store.close()
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    assert secret.encode() not in raw
    assert Store(tmp_path / "db.sqlite").verify_token("alice", secret)


def test_wrong_expired_and_revoked_tokens_fail(tmp_path):
    store = make_store(tmp_path)
    good = store.issue_token("alice")
    assert store.verify_token("alice", good["access_token"])
    assert not store.verify_token("alice", good["access_token"] + "x")
    assert not store.verify_token("bob", good["access_token"])
    expiring = store.issue_token("alice", expires_in_s=60)
    assert store.verify_token("alice", expiring["access_token"])
    assert not store.verify_token("alice", expiring["access_token"], now=time.time() + 61)
    store.revoke_token("alice", good["token_id"])
    assert not store.verify_token("alice", good["access_token"])


def test_wal_mode_and_calls_live_at_a_crash_end_unknown(tmp_path):
    store = make_store(tmp_path)
    assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    call = ServerCall("c1", DeviceRef("door", "d"), {}, ("alice",), True, OFFER, time.time(), 30)
    store.record_call(call, None).result(timeout=10)  # on disk once the future is done
    store.close()  # the process dies mid-call
    reopened = Store(tmp_path / "db.sqlite")
    assert reopened.close_interrupted_calls() == 1
    assert reopened.get_call("c1")["end_reason"] == "unknown"
    assert reopened.get_user("alice")["display_name"] == "Alice"


def test_a_second_store_on_the_same_file_sees_provisioning_at_once(tmp_path):
    """The shell commands write while the server runs."""
    store = make_store(tmp_path)
    shell = Store(tmp_path / "db.sqlite")
    shell.add_user("bob", "resident", "home", "Bob")
    assert store.get_user("bob")["display_name"] == "Bob"


def test_the_writer_commits_what_queued_together_and_a_bad_job_fails_alone(tmp_path):
    store = make_store(tmp_path)
    writer = store.writer
    started, gate = threading.Event(), threading.Event()
    writer.submit(lambda db: started.set() or gate.wait(10))  # holds the writer while the next jobs queue up
    assert started.wait(10)
    commits = writer.commits
    calls = [ServerCall(f"c{i}", DeviceRef("door", "d"), {}, ("alice",), True, OFFER, time.time(), 30)
             for i in range(20)]
    futures = [store.record_call(call, None) for call in calls]
    bad = writer.submit(lambda db: db.execute("INSERT INTO nowhere VALUES (1)"))
    gate.set()
    for future in futures:
        future.result(timeout=10)
    with pytest.raises(sqlite3.OperationalError):
        bad.result(timeout=10)
    # The gate's own commit, then the 21 queued jobs together: rolled back for the bad one,
    # and run again one by one, so the 20 good ones are stored all the same.
    assert writer.commits - commits == 21
    assert len(store.list_calls(None, 100, None)) == 20
    many = [store.record_call(ServerCall(f"d{i}", DeviceRef("door", "d"), {}, ("alice",), True, OFFER,
                                         time.time(), 30), None) for i in range(50)]
    for future in many:
        future.result(timeout=10)
    assert writer.commits - commits - 21 < 50  # queued writes shared their commits


def test_a_commit_the_disk_refuses_fails_every_job_in_it(tmp_path):
    store = make_store(tmp_path)
    store.writer.submit(lambda db: db.execute("PRAGMA query_only = ON")).result(timeout=10)
    call = ServerCall("c1", DeviceRef("door", "d"), {}, ("alice",), True, OFFER, time.time(), 30)
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        store.record_call(call, None).result(timeout=10)
    assert store.list_calls(None, 10, None) == []
