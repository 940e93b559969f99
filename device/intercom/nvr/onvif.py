"""ONVIF Profile S essentials, sans-I/O: SOAP in, SOAP out, nothing else.

Home Assistant's ONVIF integration and NVRs find a camera's stream by asking it, in SOAP,
what it is. These are the calls Home Assistant makes, in its order: GetServices,
GetCapabilities, GetSystemDateAndTime, GetDeviceInformation, GetNetworkInterfaces,
GetServiceCapabilities, GetProfiles, GetStreamUri and GetSnapshotUri. Each must carry a
WS-Security UsernameToken of an account in `rtsp.accounts_file`, except
GetSystemDateAndTime, which clients ask first to correct their clock for the token's
timestamp. Anything else gets ONVIF's ActionNotSupported fault; PTZ, imaging, events,
recordings and WS-Discovery are left out (see docs/nvr.md).

A handful of fixed responses, written out rather than generated from ONVIF's WSDL: a SOAP
stack (zeep, spyne) for nine answers would cost the Pi more than the answers do.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import hmac
import time
import xml.etree.ElementTree as ET
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from xml.sax.saxutils import escape

SOAP = "http://www.w3.org/2003/05/soap-envelope"
WSSE = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"
WSU = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd"
DIGEST = "PasswordDigest"
DEVICE_NS = "http://www.onvif.org/ver10/device/wsdl"
MEDIA_NS = "http://www.onvif.org/ver10/media/wsdl"
#: How far a token's Created may be from the door's clock, and how long its nonce is remembered.
TOKEN_WINDOW_S = 300
PRE_AUTH = frozenset({"GetSystemDateAndTime"})
PROFILE = "door"

_ENVELOPE = ('<?xml version="1.0" encoding="UTF-8"?>'
             f'<env:Envelope xmlns:env="{SOAP}" xmlns:tds="{DEVICE_NS}" xmlns:trt="{MEDIA_NS}" '
             'xmlns:tt="http://www.onvif.org/ver10/schema" xmlns:ter="http://www.onvif.org/ver10/error">'
             '<env:Body>{body}</env:Body></env:Envelope>')


@dataclass(frozen=True)
class Camera:
    """What the door tells NVRs about itself and its stream."""
    serial: str
    firmware: str
    width: int
    height: int
    fps: float
    bitrate: int
    gop: int
    rtsp_port: int
    mac: str


class Fault(Exception):
    def __init__(self, status: int, code: str, subcode: str, reason: str) -> None:
        super().__init__(reason)
        self.status, self.code, self.subcode, self.reason = status, code, subcode, reason

    def envelope(self) -> bytes:
        return _ENVELOPE.format(body=(
            f'<env:Fault><env:Code><env:Value>env:{self.code}</env:Value><env:Subcode><env:Value>ter:{self.subcode}'
            f'</env:Value></env:Subcode></env:Code><env:Reason><env:Text xml:lang="en">{escape(self.reason)}'
            '</env:Text></env:Reason></env:Fault>')).encode()


def _not_authorized(why: str) -> Fault:
    return Fault(400, "Sender", "NotAuthorized", f"Sender not authorized: {why}")


class UsernameTokens:
    """WS-Security UsernameToken checks: the digest, the clock window, and no nonce twice."""

    def __init__(self, accounts: Mapping[str, str], clock: Callable[[], float] = time.time) -> None:
        self._accounts = accounts
        self._clock = clock
        self._nonces: OrderedDict[bytes, float] = OrderedDict()

    def check(self, header: ET.Element | None) -> str:
        """The account the request's token proves, or a NotAuthorized fault."""
        token = header.find(f"{{{WSSE}}}Security/{{{WSSE}}}UsernameToken") if header is not None else None
        if token is None:
            raise _not_authorized("no WS-Security UsernameToken")
        user = token.findtext(f"{{{WSSE}}}Username") or ""
        password_node = token.find(f"{{{WSSE}}}Password")
        given = (password_node.text or "") if password_node is not None else ""
        password = self._accounts.get(user)
        if password is None:
            hmac.compare_digest(given, given)  # the same work as for a known account
            raise _not_authorized("unknown user or wrong password")
        if password_node is not None and (password_node.get("Type") or "").endswith(DIGEST):
            self._check_digest(token, given, password)
        elif not hmac.compare_digest(given.encode(), password.encode()):
            raise _not_authorized("unknown user or wrong password")
        return user

    def _check_digest(self, token: ET.Element, given: str, password: str) -> None:
        created = token.findtext(f"{{{WSU}}}Created") or ""
        try:
            nonce = base64.b64decode(token.findtext(f"{{{WSSE}}}Nonce") or "", validate=True)
            when = dt.datetime.fromisoformat(created.replace("Z", "+00:00")).timestamp()
        except (binascii.Error, ValueError):
            raise _not_authorized("malformed Nonce or Created") from None
        expected = base64.b64encode(hashlib.sha1(nonce + created.encode() + password.encode()).digest()).decode()
        if not hmac.compare_digest(given.encode(), expected.encode()):
            raise _not_authorized("unknown user or wrong password")
        now = self._clock()
        if abs(now - when) > TOKEN_WINDOW_S:
            raise _not_authorized("the token's Created is more than 5 minutes from the door's clock")
        while self._nonces and next(iter(self._nonces.values())) < now - 2 * TOKEN_WINDOW_S:
            self._nonces.popitem(last=False)
        if nonce in self._nonces:
            raise _not_authorized("the token's nonce was used before")
        self._nonces[nonce] = now


class Onvif:
    """Answers the device and media services. `handle` is all the I/O layer calls."""

    def __init__(self, camera: Camera, tokens: UsernameTokens, clock: Callable[[], float] = time.time) -> None:
        self.camera = camera
        self.tokens = tokens
        self._clock = clock
        self.requests = 0
        self.refused = 0

    def handle(self, body: bytes, host: str, service: str = "device") -> tuple[int, bytes]:
        """One SOAP request to `service` ("device" or "media") at `host` (the Host the client
        used, so the addresses given back reach the door the way the client does)."""
        self.requests += 1
        try:
            operation, header = _parse(body)
            if operation not in PRE_AUTH:
                self.tokens.check(header)
            answer = getattr(self, f"_{service}_{operation}", None) or getattr(self, f"_{operation}", None)
            if answer is None:
                raise Fault(400, "Receiver", "ActionNotSupported", f"{operation} is not supported by this door")
            return 200, _ENVELOPE.format(body=answer(host)).encode()
        except Fault as fault:
            if fault.subcode == "NotAuthorized":
                self.refused += 1
            return fault.status, fault.envelope()

    # -- the device service -------------------------------------------------------------------------

    def _GetSystemDateAndTime(self, host: str) -> str:
        now = dt.datetime.fromtimestamp(self._clock(), dt.UTC)
        return ('<tds:GetSystemDateAndTimeResponse><tds:SystemDateAndTime><tt:DateTimeType>NTP</tt:DateTimeType>'
                '<tt:DaylightSavings>false</tt:DaylightSavings><tt:TimeZone><tt:TZ>UTC0</tt:TZ></tt:TimeZone>'
                f'<tt:UTCDateTime><tt:Time><tt:Hour>{now.hour}</tt:Hour><tt:Minute>{now.minute}</tt:Minute>'
                f'<tt:Second>{now.second}</tt:Second></tt:Time><tt:Date><tt:Year>{now.year}</tt:Year>'
                f'<tt:Month>{now.month}</tt:Month><tt:Day>{now.day}</tt:Day></tt:Date></tt:UTCDateTime>'
                '</tds:SystemDateAndTime></tds:GetSystemDateAndTimeResponse>')

    def _GetServices(self, host: str) -> str:
        services = "".join(
            f'<tds:Service><tds:Namespace>{ns}</tds:Namespace><tds:XAddr>{_xaddr(host, path)}</tds:XAddr>'
            '<tds:Version><tt:Major>2</tt:Major><tt:Minor>5</tt:Minor></tds:Version></tds:Service>'
            for ns, path in ((DEVICE_NS, "device_service"), (MEDIA_NS, "media_service")))
        return f"<tds:GetServicesResponse>{services}</tds:GetServicesResponse>"

    def _GetCapabilities(self, host: str) -> str:
        return ('<tds:GetCapabilitiesResponse><tds:Capabilities>'
                f'<tt:Device><tt:XAddr>{_xaddr(host, "device_service")}</tt:XAddr></tt:Device>'
                f'<tt:Media><tt:XAddr>{_xaddr(host, "media_service")}</tt:XAddr><tt:StreamingCapabilities>'
                '<tt:RTPMulticast>false</tt:RTPMulticast><tt:RTP_TCP>true</tt:RTP_TCP>'
                '<tt:RTP_RTSP_TCP>true</tt:RTP_RTSP_TCP></tt:StreamingCapabilities></tt:Media>'
                '</tds:Capabilities></tds:GetCapabilitiesResponse>')

    def _GetDeviceInformation(self, host: str) -> str:
        c = self.camera
        return ('<tds:GetDeviceInformationResponse><tds:Manufacturer>Intercom</tds:Manufacturer>'
                f'<tds:Model>Door station</tds:Model><tds:FirmwareVersion>{escape(c.firmware)}</tds:FirmwareVersion>'
                f'<tds:SerialNumber>{escape(c.serial)}</tds:SerialNumber><tds:HardwareId>{escape(c.mac)}'
                '</tds:HardwareId></tds:GetDeviceInformationResponse>')

    def _GetNetworkInterfaces(self, host: str) -> str:
        return ('<tds:GetNetworkInterfacesResponse><tds:NetworkInterfaces token="eth0"><tt:Enabled>true</tt:Enabled>'
                f'<tt:Info><tt:Name>eth0</tt:Name><tt:HwAddress>{escape(self.camera.mac)}</tt:HwAddress></tt:Info>'
                '</tds:NetworkInterfaces></tds:GetNetworkInterfacesResponse>')

    def _device_GetServiceCapabilities(self, host: str) -> str:
        return ('<tds:GetServiceCapabilitiesResponse><tds:Capabilities>'
                '<tds:Network IPFilter="false" ZeroConfiguration="false" IPVersion6="false" DynDNS="false"/>'
                '<tds:Security TLS1.0="false" TLS1.1="false" TLS1.2="false" OnboardKeyGeneration="false" '
                'AccessPolicyConfig="false" DefaultAccessPolicy="false" Dot1X="false" RemoteUserHandling="false" '
                'X.509Token="false" SAMLToken="false" KerberosToken="false" UsernameToken="true" HttpDigest="false" '
                'RELToken="false"/><tds:System DiscoveryResolve="false" DiscoveryBye="false" RemoteDiscovery="false" '
                'SystemBackup="false" SystemLogging="false" FirmwareUpgrade="false"/>'
                '</tds:Capabilities></tds:GetServiceCapabilitiesResponse>')

    def _media_GetServiceCapabilities(self, host: str) -> str:
        # What Home Assistant asks the media service for: whether there is a snapshot URI.
        return ('<trt:GetServiceCapabilitiesResponse><trt:Capabilities SnapshotUri="true" Rotation="false" '
                'VideoSourceMode="false" OSD="false"><trt:ProfileCapabilities MaximumNumberOfProfiles="1"/>'
                '<trt:StreamingCapabilities RTPMulticast="false" RTP_TCP="true" RTP_RTSP_TCP="true"/>'
                '</trt:Capabilities></trt:GetServiceCapabilitiesResponse>')

    # -- the media service --------------------------------------------------------------------------

    def _GetProfiles(self, host: str) -> str:
        c = self.camera
        return ('<trt:GetProfilesResponse>'
                f'<trt:Profiles token="{PROFILE}" fixed="true"><tt:Name>Door camera</tt:Name>'
                '<tt:VideoSourceConfiguration token="camera"><tt:Name>camera</tt:Name><tt:UseCount>1</tt:UseCount>'
                f'<tt:SourceToken>camera</tt:SourceToken><tt:Bounds x="0" y="0" width="{c.width}" height="{c.height}"/>'
                '</tt:VideoSourceConfiguration>'
                '<tt:VideoEncoderConfiguration token="h264"><tt:Name>h264</tt:Name><tt:UseCount>1</tt:UseCount>'
                f'<tt:Encoding>H264</tt:Encoding><tt:Resolution><tt:Width>{c.width}</tt:Width>'
                f'<tt:Height>{c.height}</tt:Height></tt:Resolution><tt:Quality>5</tt:Quality><tt:RateControl>'
                f'<tt:FrameRateLimit>{round(c.fps)}</tt:FrameRateLimit><tt:EncodingInterval>1</tt:EncodingInterval>'
                f'<tt:BitrateLimit>{c.bitrate // 1000}</tt:BitrateLimit></tt:RateControl><tt:H264>'
                f'<tt:GovLength>{c.gop}</tt:GovLength><tt:H264Profile>Baseline</tt:H264Profile></tt:H264>'
                '<tt:Multicast><tt:Address><tt:Type>IPv4</tt:Type><tt:IPv4Address>0.0.0.0</tt:IPv4Address>'
                '</tt:Address><tt:Port>0</tt:Port><tt:TTL>0</tt:TTL><tt:AutoStart>false</tt:AutoStart></tt:Multicast>'
                '<tt:SessionTimeout>PT60S</tt:SessionTimeout></tt:VideoEncoderConfiguration>'
                '</trt:Profiles></trt:GetProfilesResponse>')

    def _GetStreamUri(self, host: str) -> str:
        uri = f"rtsp://{_hostname(host)}:{self.camera.rtsp_port}/door"
        return f"<trt:GetStreamUriResponse>{_media_uri(uri)}</trt:GetStreamUriResponse>"

    def _GetSnapshotUri(self, host: str) -> str:
        return f"<trt:GetSnapshotUriResponse>{_media_uri(f'http://{escape(host)}/snapshot.jpg')}</trt:GetSnapshotUriResponse>"


def _parse(body: bytes) -> tuple[str, ET.Element | None]:
    """The operation's name and the SOAP header of a request."""
    try:
        root = ET.fromstring(body)
    except ET.ParseError as exc:
        raise Fault(400, "Sender", "WellFormed", f"not XML: {exc}") from None
    envelope_ns = root.tag[1:].split("}")[0] if root.tag.startswith("{") else ""
    found = root.find(f"{{{envelope_ns}}}Body")
    if found is None or len(found) == 0:
        raise Fault(400, "Sender", "WellFormed", "a SOAP envelope with a Body is expected")
    operation = found[0].tag.rsplit("}", 1)[-1]
    return operation, root.find(f"{{{envelope_ns}}}Header")


def _hostname(host: str) -> str:
    """The Host header without its port ([::1]:8000 gives [::1])."""
    if host.startswith("["):
        return escape(host[:host.index("]") + 1]) if "]" in host else escape(host)
    return escape(host.partition(":")[0])


def _xaddr(host: str, service: str) -> str:
    return f"http://{escape(host)}/onvif/{service}"


def _media_uri(uri: str) -> str:
    return (f"<trt:MediaUri><tt:Uri>{uri}</tt:Uri><tt:InvalidAfterConnect>false</tt:InvalidAfterConnect>"
            "<tt:InvalidAfterReboot>false</tt:InvalidAfterReboot><tt:Timeout>PT0S</tt:Timeout></trt:MediaUri>")
