"""The Platform REST API: Api-Token guarded; sites, users, tokens and call history."""

import pytest

from intercom_server.records import NotFound

from .conftest import ENGINES, OFFER

#: The history, tokens and door log these tests read back are the store's: on both engines.
pytestmark = pytest.mark.parametrize("server", ENGINES, indirect=True)


async def test_every_call_needs_the_api_token(server):
    for token in (None, "wrong-token"):
        status, body = await server.api("POST", "/v1/sites", {"site_id": "x", "name": "X"}, token=token)
        assert status == 401 and body["error"]["code"] == "unauthenticated"
    with pytest.raises(NotFound):
        await server.store.users.get_site("x")


async def test_provisioning_a_site_a_user_and_a_token_that_signs_in(server):
    assert (await server.api("POST", "/v1/sites", {"site_id": "flat7", "name": "Flat 7"}))[0] == 201
    status, user = await server.api("POST", "/v1/users", {"user_id": "carol", "kind": "resident", "site_id": "flat7",
                                                          "display_name": "Carol"})
    assert status == 201 and user["site_id"] == "flat7"
    assert (await server.api("GET", "/v1/users/carol")) == (200, user)
    status, token = await server.api("POST", "/v1/users/carol/tokens", {"expires_in_s": 3600})
    assert status == 201 and token["access_token"].startswith("ict_") and token["expires_at"]
    client = await server.signed_in("carol", token["access_token"])
    assert client.device_id

    status, listed = await server.api("GET", "/v1/users/carol/tokens")
    assert [t["token_id"] for t in listed["tokens"]] == [token["token_id"]]
    assert "access_token" not in listed["tokens"][0]
    assert (await server.api("DELETE", f"/v1/users/carol/tokens/{token['token_id']}"))[0] == 204
    again = await server.connect()
    reply = await again.request("authenticate", user_id="carol", access_token=token["access_token"])
    assert reply["code"] == "unauthenticated"


@pytest.mark.parametrize("path, body, status, fragment", [
    ("/v1/sites", {"site_id": "bad id!", "name": "X"}, 400, "site_id must be"),
    ("/v1/sites", {"site_id": "home"}, 400, "missing fields: name"),
    ("/v1/sites", {"site_id": "home", "name": "X", "colour": "red"}, 400, "unknown fields: colour"),
    ("/v1/users", {"user_id": "u", "kind": "robot", "site_id": "home", "display_name": "U"}, 400, "kind must be"),
    ("/v1/users", {"user_id": "u", "kind": "resident", "site_id": "nowhere", "display_name": "U"}, 404, "no site"),
    ("/v1/users/ghost/tokens", {}, 404, "no user 'ghost'"),
    ("/v1/users/alice/tokens", {"expires_in_s": -5}, 400, "expires_in_s"),
])
async def test_bad_requests_are_refused_and_change_nothing(server, path, body, status, fragment):
    await server.user("alice")
    before = (await server.store.tokens.list_tokens("alice"), (await server.store.db.fetchrow("SELECT count(*) FROM users"))[0])
    got, answer = await server.api("POST", path, body)
    assert got == status and fragment in answer["error"]["message"]
    after = (await server.store.tokens.list_tokens("alice"), (await server.store.db.fetchrow("SELECT count(*) FROM users"))[0])
    assert before == after


async def test_duplicate_site_is_a_conflict(server):
    await server.api("POST", "/v1/sites", {"site_id": "a", "name": "A"})
    status, body = await server.api("POST", "/v1/sites", {"site_id": "a", "name": "Other"})
    assert status == 409 and body["error"]["code"] == "conflict"
    assert (await server.store.users.get_site("a")).name == "A"


async def test_call_history_newest_first_paged_with_timeline_and_snapshot(server):
    door = await server.signed_in("door", await server.user("door", kind="door"), "door")
    await server.user("alice")
    ids = []
    for _ in range(5):
        call_id = (await door.request("dial", callees=["alice"], offer=OFFER, snapshot="/9j/4AAQ"))["call_id"]
        await door.request("end", call_id=call_id)
        ids.append(call_id)
    seen, cursor = [], None
    while True:
        query = "/v1/direct_calls?user_id=alice&limit=2" + (f"&next={cursor}" if cursor else "")
        status, page = await server.api("GET", query)
        assert status == 200 and len(page["calls"]) <= 2
        seen += [c["call_id"] for c in page["calls"]]
        cursor = page["next"]
        if cursor is None:
            break
    assert seen == list(reversed(ids))
    status, call = await server.api("GET", f"/v1/direct_calls/{ids[0]}")
    assert call["end_reason"] == "canceled" and [e["event"] for e in call["timeline"]] == ["ringing", "ended"]
    status, jpeg = await server.api("GET", f"/v1/direct_calls/{ids[0]}/snapshot")
    assert status == 200 and jpeg.startswith(b"\xff\xd8\xff")
    assert (await server.api("GET", "/v1/direct_calls/call_nope"))[0] == 404
    assert (await server.api("GET", "/v1/direct_calls?limit=0"))[0] == 400
    assert (await server.api("GET", "/v1/direct_calls?user_id=ghost"))[0] == 404


async def test_the_parties_of_a_call_fetch_its_snapshot_with_their_own_token(server):
    door = await server.signed_in("door", await server.user("door", kind="door"), "door")
    alice_token, bob_token = await server.user("alice"), await server.user("bob")
    stranger_token = await server.user("mallory", site="other")
    call_id = (await door.request("dial", callees=["alice", "bob"], offer=OFFER, snapshot="/9j/4AAQ"))["call_id"]
    path = f"/v1/direct_calls/{call_id}/snapshot"
    for token in (alice_token, bob_token):  # every callee was rung, so each may see who rang
        status, jpeg = await server.api("GET", path, bearer=token)
        assert status == 200 and jpeg.startswith(b"\xff\xd8\xff")
    status, body = await server.api("GET", path, bearer=stranger_token)
    assert status == 404 and body["error"]["code"] == "not_found"  # as if the call did not exist
    assert (await server.api("GET", f"/v1/direct_calls/{call_id}", bearer=stranger_token))[0] == 404
    status, call = await server.api("GET", f"/v1/direct_calls/{call_id}", bearer=alice_token)
    assert status == 200 and call["has_snapshot"] is True
    token_id = (await server.store.tokens.list_tokens("alice"))[0]["token_id"]
    await server.store.tokens.revoke_token("alice", token_id)
    assert (await server.api("GET", path, bearer=alice_token))[0] == 401
    assert (await server.api("GET", path, bearer="ict_made_up"))[0] == 401


async def test_a_party_lists_only_its_own_calls_and_cannot_use_the_admin_calls(server):
    door = await server.signed_in("door", await server.user("door", kind="door"), "door")
    alice_token = await server.user("alice")
    await server.user("bob")
    for callee in ("alice", "bob", "alice"):
        call_id = (await door.request("dial", callees=[callee], offer=OFFER))["call_id"]
        await door.request("end", call_id=call_id)
    status, page = await server.api("GET", "/v1/direct_calls", bearer=alice_token)
    assert status == 200 and [c["callees"] for c in page["calls"]] == [["alice"], ["alice"]]
    status, body = await server.api("GET", "/v1/direct_calls?user_id=bob", bearer=alice_token)
    assert status == 403 and body["error"]["code"] == "forbidden"
    assert (await server.api("GET", "/v1/users/alice", bearer=alice_token))[0] == 401
    assert (await server.api("GET", "/v1/sites/home/users", bearer=alice_token))[0] == 401


async def test_residents_read_their_own_sites_door_log_and_nobody_elses(server):
    """The web app shows who opened the door; a door's token, or a resident of another site,
    is told the site does not exist."""
    alice = await server.user("alice")
    door = await server.user("door", kind="door")
    mallory = await server.user("mallory", site="other")
    status, page = await server.api("GET", "/v1/sites/home/audit", bearer=alice)
    assert status == 200 and page == {"events": [], "next": None}
    for token, site in ((door, "home"), (mallory, "home"), (alice, "other"), (alice, "nowhere")):
        status, body = await server.api("GET", f"/v1/sites/{site}/audit", bearer=token)
        assert status == 404 and body["error"]["code"] == "not_found"


async def test_sites_and_their_users_are_listed(server):
    await server.user("door", kind="door")
    await server.user("alice")
    await server.user("mallory", site="other")
    status, body = await server.api("GET", "/v1/sites")
    assert status == 200 and [s["site_id"] for s in body["sites"]] == ["home", "other"]
    status, body = await server.api("GET", "/v1/sites/home/users")
    assert [(u["user_id"], u["kind"]) for u in body["users"]] == [("alice", "resident"), ("door", "door")]
    assert (await server.api("GET", "/v1/sites/nowhere/users"))[0] == 404


async def test_the_audit_log_pages_newest_first(server):
    phone = await server.signed_in("alice", await server.user("alice"), "phone")
    for i in range(5):  # refusals are logged too: no call with these ids
        await phone.request("action", call_id=f"call_{i}", name="open_door")
    seen, cursor = [], None
    while True:
        status, page = await server.api("GET", "/v1/sites/home/audit?limit=2" + (f"&next={cursor}" if cursor else ""))
        assert status == 200
        seen += [e["call_id"] for e in page["events"]]
        if (cursor := page["next"]) is None:
            break
    assert seen == [f"call_{i}" for i in reversed(range(5))]
    assert (await server.api("GET", "/v1/sites/home/audit?next=zzz"))[0] == 400
