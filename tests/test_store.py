"""What the server keeps, and what it must never keep: on SQLite and on PostgreSQL alike."""

import asyncio
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from intercom_protocol.calls import DeviceRef, ServerCall
from intercom_server.database import DatabaseError
from intercom_server.records import Party
from intercom_server.sqlite import SQLiteDatabase
from intercom_server.store import MIGRATIONS, SCHEMA_1, Store, StoreUnavailable

from .conftest import ENGINES, OFFER

both = pytest.mark.parametrize("database", ENGINES, indirect=True)


async def make_store(database: str | Path) -> Store:
    store = await Store.open(database)
    await store.users.add_site("home", "Home")
    await store.users.add_user("alice", "resident", "home", "Alice")
    return store


def a_call(call_id: str) -> ServerCall:
    return ServerCall(call_id, DeviceRef("door", "d"), {}, ("alice",), True, OFFER, time.time(), 30)


@both
async def test_tokens_are_stored_only_as_hashes(database, tmp_path):
    store = await make_store(database)
    secret = (await store.tokens.issue_token("alice"))["access_token"]
    await store.close()
    if isinstance(database, Path):
        raw = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.is_file())
        assert secret.encode() not in raw
    reopened = await Store.open(database)
    rows = await reopened.db.fetch("SELECT token_hash FROM tokens")
    assert rows and all(secret not in row[0] for row in rows)
    assert await reopened.tokens.verify_token("alice", secret)
    await reopened.close()


@both
async def test_wrong_expired_and_revoked_tokens_fail(database):
    store = await make_store(database)
    good = await store.tokens.issue_token("alice")
    assert await store.tokens.verify_token("alice", good["access_token"])
    assert not await store.tokens.verify_token("alice", good["access_token"] + "x")
    assert not await store.tokens.verify_token("bob", good["access_token"])
    expiring = await store.tokens.issue_token("alice", expires_in_s=60)
    assert await store.tokens.verify_token("alice", expiring["access_token"])
    assert not await store.tokens.verify_token("alice", expiring["access_token"], now=time.time() + 61)
    await store.tokens.revoke_token("alice", good["token_id"])
    assert not await store.tokens.verify_token("alice", good["access_token"])
    await store.close()


@both
async def test_calls_live_at_a_crash_end_unknown(database):
    store = await make_store(database)
    await store.calls.record_call(a_call("c1"), None)  # on disk once the future is done
    await store.close()  # the process dies mid-call
    reopened = await Store.open(database)
    assert await reopened.calls.close_interrupted_calls() == 1
    assert (await reopened.calls.get_call("c1")).end_reason == "unknown"
    assert (await reopened.users.get_user("alice")).display_name == "Alice"
    await reopened.close()


@both
async def test_a_call_s_record_its_answer_and_end_land_in_order(database):
    """Written without waiting, one after the other: the record says who answered and how it
    ended, with its timeline and picture, as the history shows it."""
    store = await make_store(database)
    call = a_call("c1")
    call.ring([DeviceRef("alice", "phone")], time.time())
    written = [store.calls.record_call(call, b"\xff\xd8picture")]
    call.accept(DeviceRef("alice", "phone"), {"type": "answer", "sdp": "v=0"}, time.time())
    written.append(store.calls.accept_call(call))
    call.end(DeviceRef("alice", "phone"), time.time())
    written.append(store.calls.finish_call(call))
    await asyncio.gather(*written)
    record = await store.calls.get_call("c1")
    assert record.accepted_by == Party("alice", "phone")
    assert record.end_reason == "completed" and record.has_snapshot is True
    assert [e["event"] for e in record.timeline] == ["ringing", "accepted", "ended"]
    assert await store.calls.snapshot("c1") == b"\xff\xd8picture"
    assert [c.call_id for c in await store.calls.list_calls("alice", 10, None)] == ["c1"]
    await store.close()


@both
async def test_a_second_store_on_the_same_database_sees_provisioning_at_once(database):
    """The shell commands write while the server runs."""
    store = await make_store(database)
    shell = await Store.open(database)
    await shell.users.add_user("bob", "resident", "home", "Bob")
    assert (await store.users.get_user("bob")).display_name == "Bob"
    seen = await store.changed_elsewhere()
    await shell.tokens.revoke_token("bob", (await shell.tokens.issue_token("bob"))["token_id"])
    assert await store.changed_elsewhere() != seen, "the server would not notice a revocation from a shell"
    await shell.close()
    await store.close()


@both
async def test_refusals_change_nothing(database):
    store = await make_store(database)
    with pytest.raises(Exception, match="already exists"):
        await store.users.add_user("alice", "resident", "home", "Alice again")
    with pytest.raises(Exception, match="no site"):
        await store.users.add_user("bob", "resident", "nowhere", "Bob")
    code = (await store.tokens.create_invite("alice"))["code"]
    await store.tokens.redeem_invite(code)
    with pytest.raises(Exception, match="already used"):
        await store.tokens.redeem_invite(code)
    assert [u.user_id for u in await store.users.list_users("home")] == ["alice"]
    assert len(await store.tokens.list_tokens("alice")) == 1
    await store.close()


@both
async def test_the_schema_is_migrated_once_and_two_processes_starting_together_agree(database):
    stores = await asyncio.gather(*(Store.open(database) for _ in range(3)))
    for store in stores:
        assert tuple(await store.db.fetchrow("SELECT MAX(version), COUNT(*) FROM schema_version")) == \
            (len(MIGRATIONS), len(MIGRATIONS))
    await stores[0].users.add_site("home", "Home")
    for store in stores:
        await store.close()
    again = await Store.open(database)
    assert [s.site_id for s in await again.users.list_sites()] == ["home"]
    await again.close()


async def test_a_database_made_before_migrations_opens_with_its_data(tmp_path):
    """Files of earlier releases had the first schema and no version table."""
    path = tmp_path / "old.db"
    old = sqlite3.connect(path)
    old.executescript(SCHEMA_1)
    old.execute("INSERT INTO sites VALUES ('home', 'Home', 0)")
    old.commit()
    old.close()
    store = await Store.open(path)
    assert [s.site_id for s in await store.users.list_sites()] == ["home"]
    assert (await store.db.fetchrow("SELECT MAX(version) FROM schema_version"))[0] == len(MIGRATIONS)
    await store.close()


@pytest.mark.parametrize("url", ["postgresql://intercom:s3cret@127.0.0.1:1/intercom"])
async def test_an_unreachable_postgresql_is_named_in_one_line_without_its_password(url):
    with pytest.raises(StoreUnavailable) as failed:
        await Store.open(url)
    message = str(failed.value)
    assert "cannot reach the database" in message and "127.0.0.1:1" in message
    assert "s3cret" not in message and "\n" not in message


async def test_postgresql_commits_what_queued_together_and_a_bad_write_fails_alone(postgres):
    store = await make_store(postgres.new_database())
    calls = [store.calls.record_call(a_call(f"c{i}"), None) for i in range(20)]
    bad = store.db.write([("INSERT INTO nowhere VALUES (1)", ())])
    calls += [store.calls.record_call(a_call(f"d{i}"), None) for i in range(20)]
    await asyncio.gather(*calls)
    with pytest.raises(DatabaseError, match="nowhere"):
        await bad
    assert len(await store.calls.list_calls(None, 100, None)) == 40
    await store.close()


async def test_the_sqlite_file_is_in_wal_mode(tmp_path):
    store = await make_store(tmp_path / "db.sqlite")
    assert (await store.db.fetchrow("PRAGMA journal_mode"))[0] == "wal"
    await store.close()


async def test_the_writer_commits_what_queued_together_and_a_bad_job_fails_alone(tmp_path):
    store = await make_store(tmp_path / "db.sqlite")
    assert isinstance(store.db, SQLiteDatabase)
    writer = store.db.writer
    started, gate = threading.Event(), threading.Event()
    writer.submit(lambda db: started.set() or gate.wait(10))  # holds the writer while the next jobs queue up
    assert started.wait(10)
    commits = writer.commits
    futures = [store.calls.record_call(a_call(f"c{i}"), None) for i in range(20)]
    bad = store.db.write([("INSERT INTO nowhere VALUES (1)", ())])
    gate.set()
    await asyncio.gather(*futures)
    with pytest.raises(DatabaseError, match="nowhere"):
        await bad
    # The gate's own commit, then the 21 queued jobs together: rolled back for the bad one,
    # and run again one by one, so the 20 good ones are stored all the same.
    assert writer.commits - commits == 21
    assert len(await store.calls.list_calls(None, 100, None)) == 20
    await asyncio.gather(*(store.calls.record_call(a_call(f"d{i}"), None) for i in range(50)))
    assert writer.commits - commits - 21 < 50  # queued writes shared their commits
    await store.close()


async def test_a_commit_the_disk_refuses_fails_every_job_in_it(tmp_path):
    store = await make_store(tmp_path / "db.sqlite")
    assert isinstance(store.db, SQLiteDatabase)
    store.db.writer.submit(lambda db: db.execute("PRAGMA query_only = ON")).result(timeout=10)
    with pytest.raises(DatabaseError, match="readonly"):
        await store.calls.record_call(a_call("c1"), None)
    assert await store.calls.list_calls(None, 10, None) == []
    await store.close()


async def test_a_server_whose_database_stops_answering_says_so_and_recovers_by_itself(tmp_path):
    """The load balancer's health check fails, new devices are sent elsewhere, and when the
    database is back the same process takes them again: nobody restarts it."""
    import aiohttp
    from aiohttp import web

    from intercom_server.app import create_app
    from intercom_server.settings import HubSettings
    from intercom_sim.postgres import Postgres

    from .conftest import API_TOKEN

    database = Postgres()  # its own: this test stops it
    runner = None
    try:
        store = await make_store(database.new_database())
        await store.users.add_user("door", "door", "home", "Door")
        token = (await store.tokens.issue_token("door"))["access_token"]
        settings = HubSettings(health_check_s=0.1)
        settings.messages.directory = tmp_path / "messages"
        runner = web.AppRunner(create_app(store, settings, API_TOKEN))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        async with aiohttp.ClientSession() as http:

            async def health() -> tuple[int, dict]:
                async with http.get(url + "/healthz", headers={"Api-Token": API_TOKEN}) as resp:
                    return resp.status, await resp.json()

            async def until(status: int) -> dict:
                for _ in range(300):  # checked every 0.1 s: within 30 s, on a busy machine too
                    got, body = await health()
                    if got == status:
                        return body
                    await asyncio.sleep(0.1)
                raise AssertionError(f"/healthz never answered {status}: {got} {body}")

            async def signs_in() -> bool:
                try:
                    async with http.ws_connect(url.replace("http", "ws") + "/v1/ws") as ws:
                        await ws.send_json({"type": "authenticate", "id": "1", "user_id": "door",
                                            "access_token": token, "device_id": "door"})
                        return (await ws.receive_json(timeout=10))["type"] == "ok"
                except aiohttp.WSServerHandshakeError as refused:
                    assert refused.status == 503
                    return False

            assert (await until(200))["database"] == {"ok": True, "error": None}
            assert await signs_in()
            database.pause()
            down = await until(503)
            assert down["ok"] is False and down["database"]["error"]
            async with http.get(url + "/healthz") as resp:  # what a load balancer sees, without the token
                assert resp.status == 503 and await resp.json() == {"ok": False}
            assert not await signs_in()
            database.resume()
            await until(200)
            assert await signs_in()
            assert [u.user_id for u in await store.users.list_users("home")] == ["alice", "door"]
    finally:
        if runner is not None:
            await runner.cleanup()
        database.stop()


@both
async def test_a_write_of_several_statements_stands_or_falls_whole(database):
    """A write of a record and rows that name it: a refused row leaves no record, and a
    good write leaves both (on PostgreSQL the statements run as one)."""
    store = await make_store(database)
    record = ("INSERT INTO calls (call_id, caller_id, caller_device, callees, video, created_at) "
              "VALUES (?, ?, ?, ?, ?, ?)", ("c1", "door", "d", '["alice"]', 1, time.time()))
    with pytest.raises(DatabaseError):
        await store.db.write([record, ("INSERT INTO call_parties VALUES (?, ?)", ("c1", None))])
    assert await store.calls.find_call("c1") is None
    assert await store.db.write([record, ("INSERT INTO call_parties VALUES (?, ?)", ("c1", "alice")),
                                 ("UPDATE users SET display_name = ? WHERE user_id = ? RETURNING user_id",
                                  ("Alice B.", "alice"))]) == "alice"
    assert [c.call_id for c in await store.calls.list_calls("alice", 10, None)] == ["c1"]
    assert await store.calls.call_parties("c1") == ["alice"]
    await store.close()
