"""What the server keeps, and what it must never keep."""

import time

from intercom.core.calls import DeviceRef, ServerCall
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
    store.record_call(call, None)
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
