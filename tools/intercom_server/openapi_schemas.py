"""The Platform REST API's schemas (`components.schemas` of the OpenAPI document) and the
helpers its paths are written with (`openapi.py`)."""

from __future__ import annotations

from typing import Any

from .availability import DAYS, MAX_DND_S, MAX_WINDOWS, TIME_ZONES
from .records import ID_PATTERN, MAX_INVITE_LIFETIME_S, MAX_NAME, MAX_TOKEN_LIFETIME_S, NAME_PATTERN
from .webhooks import EVENTS, MAX_URL


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def json_content(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def errors(*statuses: int) -> dict[str, Any]:
    return {str(s): {"$ref": f"#/components/responses/E{s}"} for s in (400, 401, *statuses)}


def path_id(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "description": description,
            "schema": {"type": "string", "pattern": ID_PATTERN}}


CALL_ID = {"name": "call_id", "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}
LIMIT = {"name": "limit", "in": "query", "required": False, "description": "page size",
          "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 20}}
def _next(pattern: str) -> dict[str, Any]:
    return {"name": "next", "in": "query", "required": False,
            "description": "the `next` of the previous page, as given", "schema": {"type": "string", "pattern": pattern}}


#: The paging cursors: what the server hands out, and all it accepts back.
CALLS_CURSOR = r"^[0-9]{1,12}(\.[0-9]{1,20})?:[A-Za-z0-9_]{1,64}$"
AUDIT_CURSOR = r"^[0-9]{1,18}$"
CALLS_NEXT = _next(CALLS_CURSOR)
AUDIT_NEXT = _next(AUDIT_CURSOR)
API_ONLY: list[dict[str, list[str]]] = [{"ApiToken": []}]
API_OR_PARTY: list[dict[str, list[str]]] = [{"ApiToken": []}, {"AccessToken": []}]
PARTY_ONLY: list[dict[str, list[str]]] = [{"AccessToken": []}]
_NULLABLE_TIME = {"type": ["string", "null"], "format": "date-time"}
_DEVICE = {"type": "object", "required": ["user_id", "device_id"],
           "properties": {"user_id": {"type": "string"}, "device_id": {"type": "string"}}}
_NULLABLE_DEVICE = {"oneOf": [{"type": "null"}, _DEVICE]}

_CALL_PROPERTIES = {
    "call_id": {"type": "string"},
    "caller": _DEVICE,
    "callees": {"type": "array", "items": {"type": "string"}},
    "video": {"type": "boolean"},
    "created_at": {"type": "string", "format": "date-time"},
    "accepted_by": _NULLABLE_DEVICE,
    "accepted_at": _NULLABLE_TIME,
    "ended_at": _NULLABLE_TIME,
    "end_reason": {"type": ["string", "null"],
                   "enum": ["no_answer", "canceled", "declined", "other_device_accepted", "completed",
                            "connection_lost", "timed_out", "dial_failed", "unknown", "unavailable", None]},
    "ended_by": _NULLABLE_DEVICE,
    "duration_s": {"type": ["number", "null"], "description": "from accept to end"},
    "has_snapshot": {"type": "boolean"},
    "has_message": {"type": "boolean", "description": "the visitor left a message (nobody could answer)"},
}

_WEBHOOK_EVENTS = {"type": "array", "minItems": 1, "items": {"type": "string", "enum": list(EVENTS)},
                   "description": "what the receiver is sent"}
_WEBHOOK_URL = {
    "type": "string", "maxLength": MAX_URL,
    "pattern": r"^(https://[A-Za-z0-9.-]+|http://(localhost|127\.0\.0\.1|192\.168\.{o}\.{o}|"
               r"[A-Za-z0-9-]+\.(local|lan|home\.arpa|internal)))(:[0-9]{{1,4}})?(/[^#\s]*)?$".format(
                   o="(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"),
    "description": "https://; http:// only with allow_http, to a loopback or private address or a local name "
                   "(.local, .lan, .home.arpa, .internal, localhost)"}
#: Plain http must be asked for (and is for this machine or the local network only).
_HTTP_NEEDS_ALLOW = {"if": {"required": ["url"], "properties": {"url": {"pattern": "^http:"}}},
                     "then": {"required": ["allow_http"], "properties": {"allow_http": {"const": True}}}}
_WEBHOOK_PROPERTIES = {
    "webhook_id": {"type": "string"}, "site_id": {"type": "string"}, "url": {"type": "string"},
    "events": {"type": "array", "items": {"type": "string", "enum": list(EVENTS)}},
    "allow_http": {"type": "boolean"}, "created_at": {"type": "string", "format": "date-time"},
    "enabled": {"type": "boolean"},
    "disabled_reason": {"type": ["string", "null"], "description": "why the server switched it off"},
    "failures": {"type": "integer", "description": "deliveries failed in a row"},
    "last_error": {"type": ["string", "null"]}, "last_delivery_at": _NULLABLE_TIME, "last_failure_at": _NULLABLE_TIME,
}

_CLOCK_TIME = {"type": "string", "pattern": "^([01][0-9]|2[0-3]):[0-5][0-9]$", "description": "HH:MM, wall-clock"}
_QUIET_WINDOW = {
    "type": "object", "required": ["start", "end"], "additionalProperties": False,
    "description": "A window on the days it starts; one that ends before it starts ends the next day, one "
                   "that ends when it starts is the whole day. In the site's time zone.",
    "properties": {"days": {"type": "array", "minItems": 1, "items": {"type": "string", "enum": list(DAYS)},
                            "description": "default: every day"},
                   "start": _CLOCK_TIME, "end": _CLOCK_TIME}}
_SITE_RULES = {"type": "object", "required": ["away", "time_zone"], "properties": {
    "away": {"type": "boolean", "description": "nobody of the site is rung"}, "time_zone": {"type": "string"}}}

SCHEMAS: dict[str, Any] = {
    "Error": {"type": "object", "required": ["error"], "properties": {"error": {
        "type": "object", "required": ["code", "message"],
        "properties": {"code": {"type": "string", "enum": ["bad_request", "unauthenticated", "forbidden",
                                                            "not_found", "conflict", "too_large", "rate_limited",
                                                            "internal"]},
                       "message": {"type": "string"}}}}},
    "NewSite": {"type": "object", "required": ["site_id", "name"], "additionalProperties": False, "properties": {
        "site_id": {"type": "string", "pattern": ID_PATTERN},
        "name": {"type": "string", "minLength": 1, "maxLength": MAX_NAME, "pattern": NAME_PATTERN}}},
    "Site": {"type": "object", "required": ["site_id", "name", "created_at"], "properties": {
        "site_id": {"type": "string"}, "name": {"type": "string"},
        "created_at": {"type": "string", "format": "date-time"}}},
    "NewUser": {"type": "object", "required": ["user_id", "kind", "site_id", "display_name"],
                "additionalProperties": False, "properties": {
                    "user_id": {"type": "string", "pattern": ID_PATTERN},
                    "kind": {"type": "string", "enum": ["door", "resident"]},
                    "site_id": {"type": "string", "pattern": ID_PATTERN},
                    "display_name": {"type": "string", "minLength": 1, "maxLength": MAX_NAME, "pattern": NAME_PATTERN}}},
    "User": {"type": "object", "required": ["user_id", "kind", "site_id", "display_name"], "properties": {
        "user_id": {"type": "string"}, "kind": {"type": "string", "enum": ["door", "resident"]},
        "site_id": {"type": "string"}, "display_name": {"type": "string"}}},
    "NewToken": {"type": "object", "additionalProperties": False, "properties": {
        "expires_in_s": {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_TOKEN_LIFETIME_S,
                         "description": "lifetime; without it the token lasts until revoked"}}},
    "IssuedToken": {"type": "object", "required": ["token_id", "access_token", "expires_at"], "properties": {
        "token_id": {"type": "string"},
        "access_token": {"type": "string", "description": "shown this once; the server keeps only its hash"},
        "expires_at": _NULLABLE_TIME}},
    "TokenInfo": {"type": "object", "required": ["token_id", "created_at", "expires_at"], "properties": {
        "token_id": {"type": "string"}, "created_at": {"type": "string", "format": "date-time"},
        "expires_at": _NULLABLE_TIME}},
    "NewInvite": {"type": "object", "additionalProperties": False, "properties": {
        "expires_in_s": {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_INVITE_LIFETIME_S,
                         "description": "how long the link can be used; default 7 days"}}},
    "NewPairing": {"type": "object", "additionalProperties": False, "properties": {
        "expires_in_s": {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_INVITE_LIFETIME_S,
                         "description": "how long the link can be used; default one hour"}}},
    "Invite": {"type": "object", "required": ["invite_id", "user_id", "code", "expires_at", "url"], "properties": {
        "invite_id": {"type": "string"}, "user_id": {"type": "string"},
        "code": {"type": "string", "description": "shown this once; the server keeps only its hash"},
        "expires_at": {"type": "string", "format": "date-time"},
        "url": {"type": "string", "description": "the link to send, the code in its fragment"}}},
    "InviteInfo": {"type": "object", "required": ["invite_id", "created_at", "expires_at", "redeemed_at", "token_id"],
                   "properties": {"invite_id": {"type": "string"},
                                  "created_at": {"type": "string", "format": "date-time"},
                                  "expires_at": {"type": "string", "format": "date-time"},
                                  "redeemed_at": _NULLABLE_TIME, "token_id": {"type": ["string", "null"]}}},
    "Redeem": {"type": "object", "required": ["code"], "additionalProperties": False, "properties": {
        "code": {"type": "string", "minLength": 1, "maxLength": 200}}},
    "SignedIn": {"type": "object", "required": ["token_id", "access_token", "expires_at", "user"], "properties": {
        "token_id": {"type": "string"}, "access_token": {"type": "string"}, "expires_at": _NULLABLE_TIME,
        "user": ref("User")}},
    "Me": {"type": "object", "required": ["user", "site", "users"], "properties": {
        "user": ref("User"), "site": ref("Site"), "users": {"type": "array", "items": ref("User")}}},
    "Call": {"type": "object", "required": list(_CALL_PROPERTIES), "properties": _CALL_PROPERTIES},
    "CallWithTimeline": {"type": "object", "required": [*_CALL_PROPERTIES, "timeline"], "properties": {
        **_CALL_PROPERTIES,
        "timeline": {"type": "array", "items": {
            "type": "object", "required": ["at", "event"],
            "properties": {"at": {"type": "string", "format": "date-time"},
                           "event": {"type": "string", "enum": ["ringing", "reached", "accepted", "declined",
                                                                 "lost", "ended", "pressed_offline",
                                                                 "reported"]}}}}}},
    "PushSubscription": {
        "type": "object", "required": ["endpoint", "keys"], "additionalProperties": False,
        "description": "what the browser's PushSubscription.toJSON() gives",
        "properties": {
            "endpoint": {"type": "string", "maxLength": 2048,
                         "description": "https:// at a push service (http:// only for push.local_hosts)"},
            "expirationTime": {"type": ["number", "null"]},
            "keys": {"type": "object", "required": ["p256dh", "auth"], "properties": {
                "p256dh": {"type": "string", "description": "the P-256 public key, base64url"},
                "auth": {"type": "string", "description": "16 bytes, base64url"}}}}},
    "PushDevice": {"type": "object", "required": ["device_id", "push_service", "created_at"], "properties": {
        "device_id": {"type": "string"},
        "push_service": {"type": "string", "description": "the push service's origin; the endpoint is never shown"},
        "created_at": {"type": "string", "format": "date-time"}}},
    "PushKey": {"type": "object", "required": ["public_key"], "properties": {
        "public_key": {"type": "string", "description": "the VAPID public key (applicationServerKey), base64url"}}},
    "PushTest": {"type": "object", "required": ["sent_to"], "properties": {"sent_to": {"type": "string"}}},
    "Decline": {"type": "object", "required": ["device_id"], "additionalProperties": False, "properties": {
        "device_id": {"type": "string", "pattern": ID_PATTERN}}},
    "Availability": {"type": "object",
                     "required": ["do_not_disturb", "quiet_hours", "site", "available", "reason"], "properties": {
        "do_not_disturb": {"type": "object", "required": ["on", "until"], "properties": {
            "on": {"type": "boolean"}, "until": _NULLABLE_TIME}},
        "quiet_hours": {"type": "array", "items": _QUIET_WINDOW},
        "site": _SITE_RULES,
        "available": {"type": "boolean", "description": "whether a press would ring this resident now"},
        "reason": {"type": ["string", "null"], "enum": ["away", "do_not_disturb", "quiet_hours", None]}}},
    "AvailabilityChange": {"type": "object", "additionalProperties": False, "properties": {
        "do_not_disturb": {"type": "object", "required": ["on"], "additionalProperties": False, "properties": {
            "on": {"type": "boolean"},
            "for_s": {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_DND_S,
                      "description": "ends by itself after this long; without it, until switched off"}}},
        "quiet_hours": {"type": "array", "maxItems": MAX_WINDOWS, "items": _QUIET_WINDOW,
                        "description": "replaces the resident's quiet hours"}}},
    "SiteAvailability": _SITE_RULES,
    "SiteAvailabilityChange": {"type": "object", "additionalProperties": False, "properties": {
        "away": {"type": "boolean"},
        "time_zone": {"type": "string", "enum": sorted(TIME_ZONES), "description": "IANA, e.g. Europe/Berlin"}}},
    "NewWebhook": {"type": "object", "required": ["url", "events"], "additionalProperties": False, "properties": {
        "url": _WEBHOOK_URL, "events": _WEBHOOK_EVENTS, "allow_http": {"type": "boolean", "default": False}},
        **_HTTP_NEEDS_ALLOW},
    "WebhookChange": {"type": "object", "additionalProperties": False, **_HTTP_NEEDS_ALLOW, "properties": {
        "url": _WEBHOOK_URL, "events": _WEBHOOK_EVENTS,
        "allow_http": {"type": "boolean"},
        "enabled": {"type": "boolean", "description": "true switches a receiver on again and clears its failures"}}},
    "Webhook": {"type": "object", "required": list(_WEBHOOK_PROPERTIES), "properties": _WEBHOOK_PROPERTIES},
    "NewWebhookSecret": {"type": "object", "required": [*_WEBHOOK_PROPERTIES, "secret"], "properties": {
        **_WEBHOOK_PROPERTIES,
        "secret": {"type": "string", "pattern": "^whsec_",
                   "description": "shown this once: the Standard Webhooks signing secret (whsec_ and base64)"}}},
    "AuditEvent": {"type": "object", "required": ["audit_id", "at", "action", "outcome", "by", "call_id"],
                   "properties": {
                       "audit_id": {"type": "integer"}, "at": {"type": "string", "format": "date-time"},
                       "action": {"type": "string", "enum": ["open_door"]},
                       "outcome": {"type": "string", "enum": ["opening", "opened", "refused", "failed"]},
                       "by": {**_DEVICE, "description": "the resident's device; for an integration (Home "
                                                          "Assistant over MQTT), its name and device_id `integration`"},
                       "call_id": {"type": ["string", "null"],
                                   "description": "null for an integration's attempt while no call was at the door"},
                       "door_id": {"type": ["string", "null"]}, "detail": {"type": ["string", "null"]}}},
}
