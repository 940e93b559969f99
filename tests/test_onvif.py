"""The door's ONVIF and HTTP authentication cores, sans-I/O: what a replayed, stale, forged or
malformed request gets. The happy path is walked by Home Assistant's own library in test_nvr."""

from __future__ import annotations

import base64
import hashlib

from intercom.nvr.httpauth import NONCE_LIFETIME_S, HttpAuth
from intercom.nvr.onvif import Camera, Onvif, UsernameTokens

ACCOUNTS = {"hass": "talk-to-the-door"}
NOW = 1_800_000_000.0  # 2027-01-15T08:00:00Z
CREATED = "2027-01-15T08:00:00Z"
CAMERA = Camera("frontdoor", "0.1.0", 640, 480, 15, 1_000_000, 30, 8554, "02:00:00:00:00:01")


def _request(operation: str, password: str = "talk-to-the-door", nonce: bytes = b"0123456789abcdef",
             created: str = CREATED, user: str = "hass") -> bytes:
    digest = base64.b64encode(hashlib.sha1(nonce + created.encode() + password.encode()).digest()).decode()
    return f"""<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope"
      xmlns:wsse="http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"
      xmlns:wsu="http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd">
      <s:Header><wsse:Security><wsse:UsernameToken><wsse:Username>{user}</wsse:Username>
        <wsse:Password Type="http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-username-token-profile-1.0#PasswordDigest">{digest}</wsse:Password>
        <wsse:Nonce>{base64.b64encode(nonce).decode()}</wsse:Nonce><wsu:Created>{created}</wsu:Created>
      </wsse:UsernameToken></wsse:Security></s:Header>
      <s:Body><{operation} xmlns="http://www.onvif.org/ver10/device/wsdl"/></s:Body></s:Envelope>""".encode()


def _onvif(now: float = NOW) -> Onvif:
    return Onvif(CAMERA, UsernameTokens(ACCOUNTS, clock=lambda: now), clock=lambda: now)


def test_a_good_token_is_answered_once_and_its_replay_is_refused():
    onvif = _onvif()
    status, body = onvif.handle(_request("GetDeviceInformation"), "door:8000")
    assert status == 200 and b"<tds:SerialNumber>frontdoor</tds:SerialNumber>" in body
    status, body = onvif.handle(_request("GetDeviceInformation"), "door:8000")
    assert status == 400 and b"ter:NotAuthorized" in body and b"nonce was used before" in body
    assert onvif.refused == 1


def test_wrong_password_unknown_user_stale_token_and_no_token_are_refused():
    onvif = _onvif()
    for request, why in ((_request("GetProfiles", password="guess-guess"), b"wrong password"),
                         (_request("GetProfiles", user="mallory", nonce=b"n2"), b"wrong password"),
                         (_request("GetProfiles", created="2027-01-15T07:50:00Z", nonce=b"n3"), b"5 minutes"),
                         (_request("GetProfiles", created="yesterday", nonce=b"n4"), b"malformed")):
        status, body = onvif.handle(request, "door:8000")
        assert status == 400 and b"ter:NotAuthorized" in body and why in body, body
    bare = (b'<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope"><s:Body>'
            b'<GetStreamUri xmlns="http://www.onvif.org/ver10/media/wsdl"/></s:Body></s:Envelope>')
    status, body = onvif.handle(bare, "door:8000", "media")
    assert status == 400 and b"no WS-Security UsernameToken" in body
    assert onvif.refused == 5


def test_the_clock_is_told_without_a_token_and_addresses_follow_the_clients_host():
    onvif = _onvif()
    bare = (b'<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope"><s:Body>'
            b'<GetSystemDateAndTime xmlns="http://www.onvif.org/ver10/device/wsdl"/></s:Body></s:Envelope>')
    status, body = onvif.handle(bare, "door:8000")
    assert status == 200 and b"<tt:Year>2027</tt:Year>" in body and b"<tt:Hour>8</tt:Hour>" in body
    status, body = onvif.handle(_request("GetStreamUri"), "192.168.1.20:8000", "media")
    assert b"<tt:Uri>rtsp://192.168.1.20:8554/door</tt:Uri>" in body
    status, body = onvif.handle(_request("GetSnapshotUri", nonce=b"n5"), "[fd00::2]:8000", "media")
    assert b"<tt:Uri>http://[fd00::2]:8000/snapshot.jpg</tt:Uri>" in body


def test_malformed_and_unsupported_requests_get_faults_not_tracebacks():
    onvif = _onvif()
    status, body = onvif.handle(b"<not xml", "door:8000")
    assert status == 400 and b"ter:WellFormed" in body
    status, body = onvif.handle(b'<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope"/>', "door:8000")
    assert status == 400 and b"with a Body" in body
    status, body = onvif.handle(_request("SystemReboot"), "door:8000")
    assert status == 400 and b"ter:ActionNotSupported" in body and b"SystemReboot" in body


def _digest_header(auth: HttpAuth, password: str = "talk-to-the-door", uri: str = "/snapshot.jpg") -> str:
    challenge = auth.challenges()[0]
    nonce = challenge.split('nonce="')[1].split('"')[0]
    md5 = lambda text: hashlib.md5(text.encode()).hexdigest()  # noqa: E731
    ha1, ha2 = md5(f"hass:intercom:{password}"), md5(f"GET:{uri}")
    response = md5(f"{ha1}:{nonce}:00000001:c0ffee:auth:{ha2}")
    return (f'Digest username="hass", realm="intercom", nonce="{nonce}", uri="{uri}", qop=auth, nc=00000001, '
            f'cnonce="c0ffee", response="{response}"')


def test_http_digest_accepts_the_right_answer_and_refuses_stale_forged_or_misdirected_ones():
    now = [NOW]
    auth = HttpAuth(ACCOUNTS, clock=lambda: now[0])
    good = _digest_header(auth)
    assert auth.check("GET", "/snapshot.jpg", good) == "hass"
    assert auth.check("GET", "/snapshot.jpg", _digest_header(auth, password="guess-guess")) is None
    assert auth.check("GET", "/other", _digest_header(auth)) is None  # answered for another URI
    assert auth.check("GET", "/snapshot.jpg", good.replace('nonce="', 'nonce="1')) is None  # forged nonce
    now[0] += NONCE_LIFETIME_S + 1
    assert auth.check("GET", "/snapshot.jpg", good) is None  # stale
    basic = "Basic " + base64.b64encode(b"hass:talk-to-the-door").decode()
    assert auth.check("GET", "/snapshot.jpg", basic) == "hass"
    assert auth.check("GET", "/snapshot.jpg", "Basic " + base64.b64encode(b"hass:nope").decode()) is None
    assert auth.check("GET", "/snapshot.jpg", "Basic !!!") is None
    assert auth.check("GET", "/snapshot.jpg", None) is None
