"""The peer connection the door prepares while idle: ready with its offer, handed over once,
rebuilt when it ages or the ICE servers change, and never holding the camera or the microphone."""

import asyncio

from aiortc import RTCPeerConnection

from intercom.media.peer import rtc_configuration
from intercom.media.standby import StandbyPeer
from intercom.media.video import prefer_h264

OTHER_SERVERS = {"urls": ["stun:stun.example.net:3478"]}


def build(ice_servers):
    """The door's connection, without tracks. The ICE servers are what the standby decides on;
    the connection itself is made with none, so no test waits for a STUN server to answer."""
    pc = RTCPeerConnection(rtc_configuration([]))
    pc.given_ice_servers = ice_servers
    prefer_h264(pc.addTransceiver("video", direction="sendonly"))
    pc.addTransceiver("audio", direction="sendrecv")
    return pc


async def until(condition, timeout_s: float = 10.0) -> None:
    async def poll():
        while not condition():
            await asyncio.sleep(0.01)
    await asyncio.wait_for(poll(), timeout_s)


async def test_a_prepared_connection_is_handed_over_once_with_its_offer_and_candidates():
    ice: list = []
    standby = StandbyPeer(build, lambda: ice)
    standby.prepare()
    await until(lambda: standby.ready)
    pc = standby.take()
    assert pc is not None and standby.stats.taken == 1
    sdp = pc.localDescription.sdp
    assert pc.localDescription.type == "offer" and "a=candidate:" in sdp and "H264/90000" in sdp
    assert "VP8" not in sdp  # the codec preference was set before the offer was made
    assert all(t.sender.track is None for t in pc.getTransceivers())  # no camera, no microphone yet
    assert standby.take() is None and standby.stats.missed == 1  # handed over once
    await pc.close()
    await standby.close()


async def ready_then_other_servers() -> tuple[StandbyPeer, list[RTCPeerConnection]]:
    """A standby with its connection ready, whose ICE servers then change (a sign-in brought
    other ones); with the list of every connection it made."""
    ice: list = []
    made: list[RTCPeerConnection] = []
    standby = StandbyPeer(lambda servers: made.append(build(servers)) or made[-1], lambda: ice)
    standby.prepare()
    await until(lambda: standby.ready)
    ice.append(OTHER_SERVERS)
    return standby, made


async def test_new_ice_servers_make_the_prepared_connection_stale():
    standby, made = await ready_then_other_servers()
    assert standby.take() is None and standby.stats.missed == 1
    await until(lambda: made[0].connectionState == "closed")  # the stale one is closed, not leaked
    standby.prepare()  # rebuilt with the new servers
    await until(lambda: standby.ready)
    pc = standby.take()
    assert pc is made[1] and pc.given_ice_servers == [OTHER_SERVERS]
    await pc.close()
    await standby.close()


async def test_prepare_notices_ice_servers_that_changed_while_it_was_ready():
    standby, made = await ready_then_other_servers()
    standby.prepare()  # the door signed in again: same call, other servers
    await until(lambda: len(made) == 2 and standby.ready)
    assert made[0].connectionState == "closed"
    assert standby.take() is made[1]
    await made[1].close()
    await standby.close()


async def test_an_aged_connection_is_rebuilt_and_the_old_one_closed():
    made: list[RTCPeerConnection] = []
    standby = StandbyPeer(lambda servers: made.append(build(servers)) or made[-1], lambda: [], refresh_s=0.2)
    standby.prepare()
    await until(lambda: standby.stats.prepared >= 3)  # rebuilt every refresh_s, by itself
    await until(lambda: made[0].connectionState == "closed" and made[1].connectionState == "closed")
    await standby.close()
    await until(lambda: all(pc.connectionState == "closed" for pc in made))  # close() leaves none open


async def test_a_connection_that_cannot_be_made_leaves_the_press_to_build_its_own():
    def broken(_):
        raise RuntimeError("no network")
    standby = StandbyPeer(broken, lambda: [])
    standby.prepare()
    await until(lambda: standby._making is None)
    assert not standby.ready and standby.take() is None
    await standby.close()
