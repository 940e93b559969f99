"""The Platform REST API's OpenAPI 3.1 document, served at /v1/openapi.json.

Written by hand next to the handlers (app.py) rather than generated, so that it states the
contract, limits included, in the words an integrator reads; tests/test_openapi.py runs
schemathesis against the served copy, so the two cannot drift apart unnoticed.
"""

from __future__ import annotations

from typing import Any

from .availability import DAYS, MAX_DND_S, MAX_WINDOWS, TIME_ZONES
from .store import ID_PATTERN, MAX_INVITE_LIFETIME_S, MAX_NAME, MAX_TOKEN_LIFETIME_S, NAME_PATTERN
from .webhooks import EVENTS, MAX_URL


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Any]:
    return {str(s): {"$ref": f"#/components/responses/E{s}"} for s in (400, 401, *statuses)}


def _path_id(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "description": description,
            "schema": {"type": "string", "pattern": ID_PATTERN}}


_CALL_ID = {"name": "call_id", "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}
_LIMIT = {"name": "limit", "in": "query", "required": False, "description": "page size",
          "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 20}}
def _next(pattern: str) -> dict[str, Any]:
    return {"name": "next", "in": "query", "required": False,
            "description": "the `next` of the previous page, as given", "schema": {"type": "string", "pattern": pattern}}


#: The paging cursors: what the server hands out, and all it accepts back.
CALLS_CURSOR = r"^[0-9]{1,12}(\.[0-9]{1,20})?:[A-Za-z0-9_]{1,64}$"
AUDIT_CURSOR = r"^[0-9]{1,18}$"
_CALLS_NEXT = _next(CALLS_CURSOR)
_AUDIT_NEXT = _next(AUDIT_CURSOR)
_API_ONLY: list[dict[str, list[str]]] = [{"ApiToken": []}]
_API_OR_PARTY: list[dict[str, list[str]]] = [{"ApiToken": []}, {"AccessToken": []}]
_PARTY_ONLY: list[dict[str, list[str]]] = [{"AccessToken": []}]
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
        "user": _ref("User")}},
    "Me": {"type": "object", "required": ["user", "site", "users"], "properties": {
        "user": _ref("User"), "site": _ref("Site"), "users": {"type": "array", "items": _ref("User")}}},
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


def _page(key: str, item: str) -> dict[str, Any]:
    return {"type": "object", "required": [key, "next"], "properties": {
        key: {"type": "array", "items": _ref(item)}, "next": {"type": ["string", "null"]}}}


def _list(key: str, item: str) -> dict[str, Any]:
    return {"type": "object", "required": [key], "properties": {key: {"type": "array", "items": _ref(item)}}}


def _body(schema: str, required: bool = True) -> dict[str, Any]:
    return {"required": required, "content": {"application/json": {"schema": _ref(schema)}}}


_SITE_ID = _path_id("site_id", "the site")
_USER_ID = _path_id("user_id", "the user")
_WEBHOOK_ID = {"name": "webhook_id", "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}
_DEVICE_ID = _path_id("device_id", "one of this user's devices (the web app's own id)")

PATHS: dict[str, Any] = {
    "/v1/sites": {
        "post": {"summary": "Create a site: one building or household", "operationId": "createSite",
                 "security": _API_ONLY, "requestBody": _body("NewSite"),
                 "responses": {"201": _json(_ref("Site"), "the new site"), **_errors(409)}},
        "get": {"summary": "List the sites", "operationId": "listSites", "security": _API_ONLY,
                "responses": {"200": _json(_list("sites", "Site"), "every site"), **_errors()}},
    },
    "/v1/sites/{site_id}": {
        "get": {"summary": "One site", "operationId": "getSite", "security": _API_ONLY, "parameters": [_SITE_ID],
                "responses": {"200": _json(_ref("Site"), "the site"), **_errors(404)}},
    },
    "/v1/sites/{site_id}/users": {
        "get": {"summary": "The door stations and residents of a site", "operationId": "listSiteUsers",
                "security": _API_ONLY, "parameters": [_SITE_ID],
                "responses": {"200": _json(_list("users", "User"), "the site's users"), **_errors(404)}},
    },
    "/v1/sites/{site_id}/audit": {
        "get": {"summary": "Door openings, refusals and failures of a site, newest first", "operationId": "listAudit",
                "description": "With an access token: residents of this site only; anyone else gets 404.",
                "security": _API_OR_PARTY, "parameters": [_SITE_ID, _LIMIT, _AUDIT_NEXT],
                "responses": {"200": _json(_page("events", "AuditEvent"), "a page of the audit log"),
                              **_errors(404)}},
    },
    "/v1/sites/{site_id}/webhooks": {
        "post": {"summary": "Send this site's events to a URL, signed (Standard Webhooks)",
                 "operationId": "createWebhook", "security": _API_ONLY, "parameters": [_SITE_ID],
                 "description": "Each delivery is a POST of {type, timestamp, data} with the headers webhook-id, "
                                "webhook-timestamp and webhook-signature. Failed attempts are retried for "
                                "webhooks.retry_for_s; a receiver failing webhooks.disable_after deliveries in a "
                                "row is switched off.",
                 "requestBody": _body("NewWebhook"),
                 "responses": {"201": _json(_ref("NewWebhookSecret"), "the receiver, its secret shown once"),
                               **_errors(404)}},
        "get": {"summary": "The site's webhook receivers, without secrets", "operationId": "listWebhooks",
                "security": _API_ONLY, "parameters": [_SITE_ID],
                "responses": {"200": _json(_list("webhooks", "Webhook"), "the receivers"), **_errors(404)}},
    },
    "/v1/sites/{site_id}/webhooks/{webhook_id}": {
        "get": {"summary": "One webhook receiver and how its deliveries go", "operationId": "getWebhook",
                "security": _API_ONLY, "parameters": [_SITE_ID, _WEBHOOK_ID],
                "responses": {"200": _json(_ref("Webhook"), "the receiver"), **_errors(404)}},
        "patch": {"summary": "Change a receiver, or switch it off or on again", "operationId": "changeWebhook",
                  "security": _API_ONLY, "parameters": [_SITE_ID, _WEBHOOK_ID],
                  "requestBody": _body("WebhookChange"),
                  "responses": {"200": _json(_ref("Webhook"), "the receiver as changed"), **_errors(404)}},
        "delete": {"summary": "Stop sending to a receiver", "operationId": "deleteWebhook", "security": _API_ONLY,
                   "parameters": [_SITE_ID, _WEBHOOK_ID],
                   "responses": {"204": {"description": "deleted"}, **_errors(404)}},
    },
    "/v1/sites/{site_id}/availability": {
        "get": {"summary": "Whether the site is away, and its time zone", "operationId": "getSiteAvailability",
                "description": "With an access token: residents of this site only; anyone else gets 404.",
                "security": _API_OR_PARTY, "parameters": [_SITE_ID],
                "responses": {"200": _json(_ref("SiteAvailability"), "the site's rules"), **_errors(404)}},
        "put": {"summary": "Put the site away (nobody is rung) or back, or set its time zone",
                "operationId": "setSiteAvailability", "security": _API_OR_PARTY, "parameters": [_SITE_ID],
                "requestBody": _body("SiteAvailabilityChange"),
                "responses": {"200": _json(_ref("SiteAvailability"), "the site's rules"), **_errors(404)}},
    },
    "/v1/users/{user_id}/availability": {
        "get": {"summary": "A resident's do-not-disturb and quiet hours, and whether a press rings them now",
                "operationId": "getAvailability", "security": _API_ONLY, "parameters": [_USER_ID],
                "responses": {"200": _json(_ref("Availability"), "the resident's rules"), **_errors(404)}},
        "put": {"summary": "Change a resident's do-not-disturb or quiet hours", "operationId": "setAvailability",
                "security": _API_ONLY, "parameters": [_USER_ID], "requestBody": _body("AvailabilityChange"),
                "responses": {"200": _json(_ref("Availability"), "the resident's rules"), **_errors(404)}},
    },
    "/v1/me/availability": {
        "get": {"summary": "This resident's do-not-disturb and quiet hours", "operationId": "getMyAvailability",
                "security": _PARTY_ONLY,
                "responses": {"200": _json(_ref("Availability"), "the rules"), **_errors()}},
        "put": {"summary": "Change this resident's do-not-disturb or quiet hours", "operationId": "setMyAvailability",
                "security": _PARTY_ONLY, "requestBody": _body("AvailabilityChange"),
                "responses": {"200": _json(_ref("Availability"), "the rules"), **_errors()}},
    },
    "/v1/users": {
        "post": {"summary": "Create a door station or a resident", "operationId": "createUser",
                 "security": _API_ONLY, "requestBody": _body("NewUser"),
                 "responses": {"201": _json(_ref("User"), "the new user"), **_errors(404, 409)}},
    },
    "/v1/users/{user_id}": {
        "get": {"summary": "One user", "operationId": "getUser", "security": _API_ONLY, "parameters": [_USER_ID],
                "responses": {"200": _json(_ref("User"), "the user"), **_errors(404)}},
    },
    "/v1/users/{user_id}/tokens": {
        "post": {"summary": "Issue an access token", "operationId": "issueToken", "security": _API_ONLY,
                 "parameters": [_USER_ID], "requestBody": _body("NewToken", required=False),
                 "responses": {"201": _json(_ref("IssuedToken"), "the token, shown once"), **_errors(404)}},
        "get": {"summary": "The user's live tokens, without secrets", "operationId": "listTokens",
                "security": _API_ONLY, "parameters": [_USER_ID],
                "responses": {"200": _json(_list("tokens", "TokenInfo"), "the tokens"), **_errors(404)}},
    },
    "/v1/users/{user_id}/tokens/{token_id}": {
        "delete": {"summary": "Revoke a token", "operationId": "revokeToken", "security": _API_ONLY,
                   "parameters": [_USER_ID, {"name": "token_id", "in": "path", "required": True,
                                             "schema": {"type": "string", "minLength": 1}}],
                   "responses": {"204": {"description": "revoked"}, **_errors(404)}},
    },
    "/v1/users/{user_id}/invites": {
        "post": {"summary": "A one-time sign-in link for a resident's phone", "operationId": "createInvite",
                 "security": _API_ONLY, "parameters": [_USER_ID], "requestBody": _body("NewInvite", required=False),
                 "responses": {"201": _json(_ref("Invite"), "the invite, its code shown once"),
                               **_errors(404, 409)}},
        "get": {"summary": "The user's invites, without codes", "operationId": "listInvites",
                "security": _API_ONLY, "parameters": [_USER_ID],
                "responses": {"200": _json(_list("invites", "InviteInfo"), "the invites"), **_errors(404)}},
    },
    "/v1/invites/redeem": {
        "post": {"summary": "Exchange an invite's code for an access token, once", "operationId": "redeemInvite",
                 "description": "No credentials: the code is one. Unknown, used and expired codes get the same 401.",
                 "security": [], "requestBody": _body("Redeem"),
                 "responses": {"201": _json(_ref("SignedIn"), "the phone's own access token"), **_errors(429)}},
    },
    "/v1/users/{user_id}/pairings": {
        "post": {"summary": "A one-time pairing link for a door station (`intercom pair LINK` on the board)",
                 "operationId": "createPairing", "security": _API_ONLY, "parameters": [_USER_ID],
                 "requestBody": _body("NewPairing", required=False),
                 "responses": {"201": _json(_ref("Invite"), "the pairing, its code shown once"),
                               **_errors(404, 409)}},
    },
    "/v1/pairings/redeem": {
        "post": {"summary": "Exchange a door's pairing code for the door's access token, once",
                 "operationId": "redeemPairing",
                 "description": "No credentials: the code is one. Unknown, used and expired codes, and a "
                                "resident's invite code, get the same 401; wrong codes count against the "
                                "address like failed sign-ins (429 beyond).",
                 "security": [], "requestBody": _body("Redeem"),
                 "responses": {"201": _json(_ref("SignedIn"), "the door's own access token"), **_errors(429)}},
    },
    "/v1/me": {
        "get": {"summary": "Who this access token belongs to, its site and the site's users", "operationId": "getMe",
                "security": _PARTY_ONLY,
                "responses": {"200": _json(_ref("Me"), "the signed-in user"), **_errors()}},
    },
    "/v1/me/token": {
        "delete": {"summary": "Sign out: revoke the access token given", "operationId": "signOut",
                   "security": _PARTY_ONLY,
                   "responses": {"204": {"description": "revoked"}, **_errors()}},
    },
    "/v1/me/push": {
        "get": {"summary": "This user's devices that ring by Web Push when their app is closed",
                "operationId": "listPushDevices", "security": _PARTY_ONLY,
                "responses": {"200": _json(_list("subscriptions", "PushDevice"), "the devices"), **_errors()}},
    },
    "/v1/me/devices/{device_id}/push": {
        "put": {"summary": "Ring this device by Web Push when its app is closed", "operationId": "subscribePush",
                "description": "Replaces the device's previous subscription. A user has at most "
                               "push.subscriptions_per_user devices subscribed (409 beyond). The subscription "
                               "ends with the access token that made it.",
                "security": _PARTY_ONLY, "parameters": [_DEVICE_ID], "requestBody": _body("PushSubscription"),
                "responses": {"200": _json(_ref("PushDevice"), "subscribed"), **_errors(409)}},
        "delete": {"summary": "Stop ringing this device by Web Push", "operationId": "unsubscribePush",
                   "security": _PARTY_ONLY, "parameters": [_DEVICE_ID],
                   "responses": {"204": {"description": "not subscribed (any more)"}, **_errors()}},
    },
    "/v1/me/devices/{device_id}/push/test": {
        "post": {"summary": "Send this device a test notification", "operationId": "testPush",
                 "security": _PARTY_ONLY, "parameters": [_DEVICE_ID],
                 "responses": {"202": _json(_ref("PushTest"), "queued for the push service"), **_errors(404)}},
    },
    "/v1/push/public_key": {
        "get": {"summary": "The server's VAPID public key, for PushManager.subscribe", "operationId": "pushKey",
                "security": [], "responses": {"200": _json(_ref("PushKey"), "the key")}},
    },
    "/v1/direct_calls": {
        "get": {"summary": "Call history, newest first", "operationId": "listCalls", "security": _API_OR_PARTY,
                "description": "With an access token: only the calls its user was a party of.",
                "parameters": [{"name": "user_id", "in": "query", "required": False,
                                "schema": {"type": "string", "pattern": ID_PATTERN}}, _LIMIT, _CALLS_NEXT],
                "responses": {"200": _json(_page("calls", "Call"), "a page of calls"), **_errors(403, 404)}},
    },
    "/v1/direct_calls/{call_id}": {
        "get": {"summary": "One call with its timeline", "operationId": "getCall", "security": _API_OR_PARTY,
                "parameters": [_CALL_ID],
                "responses": {"200": _json(_ref("CallWithTimeline"), "the call"), **_errors(404)}},
    },
    "/v1/direct_calls/{call_id}/snapshot": {
        "get": {"summary": "The visitor's picture taken with the dial", "operationId": "getSnapshot",
                "security": _API_OR_PARTY, "parameters": [_CALL_ID],
                "responses": {"200": {"description": "the JPEG",
                                      "content": {"image/jpeg": {"schema": {"type": "string", "format": "binary"}}}},
                              **_errors(404)}},
    },
    "/v1/direct_calls/{call_id}/message": {
        "get": {"summary": "The visitor's message (MP4: the door camera's H.264 and AAC audio)",
                "operationId": "getMessage", "security": _API_OR_PARTY, "parameters": [_CALL_ID],
                "description": "With an access token: residents of the call only. Range requests are served.",
                "responses": {"200": {"description": "the MP4",
                                      "content": {"video/mp4": {"schema": {"type": "string", "format": "binary"}}}},
                              "206": {"description": "the range asked for",
                                      "content": {"video/mp4": {"schema": {"type": "string", "format": "binary"}}}},
                              **_errors(404)}},
        "put": {"summary": "The door sends its visitor's message for a call nobody answered",
                "operationId": "putMessage", "security": _PARTY_ONLY, "parameters": [_CALL_ID],
                "description": "The call's door only, with its own token; at most messages.max_mb. A second "
                               "upload of the same call is 409 (the door takes it as sent). The body is the MP4 "
                               "file (the door labels it video/mp4; any type is taken).",
                "requestBody": {"required": True, "content": {"application/octet-stream": {
                    "schema": {"type": "string", "format": "binary"}}}},
                "responses": {"201": _json({"type": "object", "required": ["call_id", "bytes"], "properties": {
                    "call_id": {"type": "string"}, "bytes": {"type": "integer"}}}, "kept"),
                              "413": _json(_ref("Error"), "larger than messages.max_mb"), **_errors(404, 409)}},
        "delete": {"summary": "Delete the visitor's message", "operationId": "deleteMessage",
                   "security": _PARTY_ONLY, "parameters": [_CALL_ID],
                   "responses": {"204": {"description": "deleted"}, **_errors(404)}},
    },
    "/v1/direct_calls/{call_id}/decline": {
        "post": {"summary": "Decline a ringing call from a notification, without the WebSocket",
                 "operationId": "declineCall", "security": _PARTY_ONLY, "parameters": [_CALL_ID],
                 "requestBody": _body("Decline"),
                 "responses": {"204": {"description": "declined"}, **_errors(403, 404, 409)}},
    },
}

OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "Intercom Platform API", "version": "1",
             "description": "Provisioning and call history of an Intercom signaling server. The WebSocket "
                            "protocol at /v1/ws is described in docs/protocol.md."},
    "paths": PATHS,
    "components": {
        "schemas": SCHEMAS,
        "responses": {f"E{s}": _json(_ref("Error"), d) for s, d in
                      ((400, "the request is malformed; nothing was changed"), (401, "no or wrong credentials"),
                       (403, "these credentials may not do this"), (404, "no such resource"),
                       (409, "the resource already exists"),
                       (429, "too many wrong codes from this address; try again after Retry-After seconds"))},
        "securitySchemes": {
            "ApiToken": {"type": "apiKey", "in": "header", "name": "Api-Token",
                         "description": "the server's master token"},
            "AccessToken": {"type": "http", "scheme": "bearer",
                            "description": "a party's own access token (a resident's web app)"},
        },
    },
}
