"""The Platform REST API's OpenAPI 3.1 document, served at /v1/openapi.json.

Written by hand next to the handlers (app.py) rather than generated, so that it states the
contract, limits included, in the words an integrator reads; tests/test_openapi.py runs
schemathesis against the served copy, so the two cannot drift apart unnoticed.
"""

from __future__ import annotations

from typing import Any

from .openapi_schemas import (
    API_ONLY,
    API_OR_PARTY,
    AUDIT_NEXT,
    CALL_ID,
    CALLS_NEXT,
    LIMIT,
    PARTY_ONLY,
    SCHEMAS,
    errors,
    json_content,
    path_id,
    ref,
)
from .records import ID_PATTERN


def _page(key: str, item: str) -> dict[str, Any]:
    return {"type": "object", "required": [key, "next"], "properties": {
        key: {"type": "array", "items": ref(item)}, "next": {"type": ["string", "null"]}}}


def _list(key: str, item: str) -> dict[str, Any]:
    return {"type": "object", "required": [key], "properties": {key: {"type": "array", "items": ref(item)}}}


def _body(schema: str, required: bool = True) -> dict[str, Any]:
    return {"required": required, "content": {"application/json": {"schema": ref(schema)}}}


_SITE_ID = path_id("site_id", "the site")
_USER_ID = path_id("user_id", "the user")
_WEBHOOK_ID = {"name": "webhook_id", "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}
_DEVICE_ID = path_id("device_id", "one of this user's devices (the web app's own id)")

PATHS: dict[str, Any] = {
    "/v1/sites": {
        "post": {"summary": "Create a site: one building or household", "operationId": "createSite",
                 "security": API_ONLY, "requestBody": _body("NewSite"),
                 "responses": {"201": json_content(ref("Site"), "the new site"), **errors(409)}},
        "get": {"summary": "List the sites", "operationId": "listSites", "security": API_ONLY,
                "responses": {"200": json_content(_list("sites", "Site"), "every site"), **errors()}},
    },
    "/v1/sites/{site_id}": {
        "get": {"summary": "One site", "operationId": "getSite", "security": API_ONLY, "parameters": [_SITE_ID],
                "responses": {"200": json_content(ref("Site"), "the site"), **errors(404)}},
    },
    "/v1/sites/{site_id}/users": {
        "get": {"summary": "The door stations and residents of a site", "operationId": "listSiteUsers",
                "security": API_ONLY, "parameters": [_SITE_ID],
                "responses": {"200": json_content(_list("users", "User"), "the site's users"), **errors(404)}},
    },
    "/v1/sites/{site_id}/audit": {
        "get": {"summary": "Door openings, refusals and failures of a site, newest first", "operationId": "listAudit",
                "description": "With an access token: residents of this site only; anyone else gets 404.",
                "security": API_OR_PARTY, "parameters": [_SITE_ID, LIMIT, AUDIT_NEXT],
                "responses": {"200": json_content(_page("events", "AuditEvent"), "a page of the audit log"),
                              **errors(404)}},
    },
    "/v1/sites/{site_id}/webhooks": {
        "post": {"summary": "Send this site's events to a URL, signed (Standard Webhooks)",
                 "operationId": "createWebhook", "security": API_ONLY, "parameters": [_SITE_ID],
                 "description": "Each delivery is a POST of {type, timestamp, data} with the headers webhook-id, "
                                "webhook-timestamp and webhook-signature. Failed attempts are retried for "
                                "webhooks.retry_for_s; a receiver failing webhooks.disable_after deliveries in a "
                                "row is switched off.",
                 "requestBody": _body("NewWebhook"),
                 "responses": {"201": json_content(ref("NewWebhookSecret"), "the receiver, its secret shown once"),
                               **errors(404)}},
        "get": {"summary": "The site's webhook receivers, without secrets", "operationId": "listWebhooks",
                "security": API_ONLY, "parameters": [_SITE_ID],
                "responses": {"200": json_content(_list("webhooks", "Webhook"), "the receivers"), **errors(404)}},
    },
    "/v1/sites/{site_id}/webhooks/{webhook_id}": {
        "get": {"summary": "One webhook receiver and how its deliveries go", "operationId": "getWebhook",
                "security": API_ONLY, "parameters": [_SITE_ID, _WEBHOOK_ID],
                "responses": {"200": json_content(ref("Webhook"), "the receiver"), **errors(404)}},
        "patch": {"summary": "Change a receiver, or switch it off or on again", "operationId": "changeWebhook",
                  "security": API_ONLY, "parameters": [_SITE_ID, _WEBHOOK_ID],
                  "requestBody": _body("WebhookChange"),
                  "responses": {"200": json_content(ref("Webhook"), "the receiver as changed"), **errors(404)}},
        "delete": {"summary": "Stop sending to a receiver", "operationId": "deleteWebhook", "security": API_ONLY,
                   "parameters": [_SITE_ID, _WEBHOOK_ID],
                   "responses": {"204": {"description": "deleted"}, **errors(404)}},
    },
    "/v1/sites/{site_id}/availability": {
        "get": {"summary": "Whether the site is away, and its time zone", "operationId": "getSiteAvailability",
                "description": "With an access token: residents of this site only; anyone else gets 404.",
                "security": API_OR_PARTY, "parameters": [_SITE_ID],
                "responses": {"200": json_content(ref("SiteAvailability"), "the site's rules"), **errors(404)}},
        "put": {"summary": "Put the site away (nobody is rung) or back, or set its time zone",
                "operationId": "setSiteAvailability", "security": API_OR_PARTY, "parameters": [_SITE_ID],
                "requestBody": _body("SiteAvailabilityChange"),
                "responses": {"200": json_content(ref("SiteAvailability"), "the site's rules"), **errors(404)}},
    },
    "/v1/users/{user_id}/availability": {
        "get": {"summary": "A resident's do-not-disturb and quiet hours, and whether a press rings them now",
                "operationId": "getAvailability", "security": API_ONLY, "parameters": [_USER_ID],
                "responses": {"200": json_content(ref("Availability"), "the resident's rules"), **errors(404)}},
        "put": {"summary": "Change a resident's do-not-disturb or quiet hours", "operationId": "setAvailability",
                "security": API_ONLY, "parameters": [_USER_ID], "requestBody": _body("AvailabilityChange"),
                "responses": {"200": json_content(ref("Availability"), "the resident's rules"), **errors(404)}},
    },
    "/v1/me/availability": {
        "get": {"summary": "This resident's do-not-disturb and quiet hours", "operationId": "getMyAvailability",
                "security": PARTY_ONLY,
                "responses": {"200": json_content(ref("Availability"), "the rules"), **errors()}},
        "put": {"summary": "Change this resident's do-not-disturb or quiet hours", "operationId": "setMyAvailability",
                "security": PARTY_ONLY, "requestBody": _body("AvailabilityChange"),
                "responses": {"200": json_content(ref("Availability"), "the rules"), **errors()}},
    },
    "/v1/users": {
        "post": {"summary": "Create a door station or a resident", "operationId": "createUser",
                 "security": API_ONLY, "requestBody": _body("NewUser"),
                 "responses": {"201": json_content(ref("User"), "the new user"), **errors(404, 409)}},
    },
    "/v1/users/{user_id}": {
        "get": {"summary": "One user", "operationId": "getUser", "security": API_ONLY, "parameters": [_USER_ID],
                "responses": {"200": json_content(ref("User"), "the user"), **errors(404)}},
    },
    "/v1/users/{user_id}/tokens": {
        "post": {"summary": "Issue an access token", "operationId": "issueToken", "security": API_ONLY,
                 "parameters": [_USER_ID], "requestBody": _body("NewToken", required=False),
                 "responses": {"201": json_content(ref("IssuedToken"), "the token, shown once"), **errors(404)}},
        "get": {"summary": "The user's live tokens, without secrets", "operationId": "listTokens",
                "security": API_ONLY, "parameters": [_USER_ID],
                "responses": {"200": json_content(_list("tokens", "TokenInfo"), "the tokens"), **errors(404)}},
    },
    "/v1/users/{user_id}/tokens/{token_id}": {
        "delete": {"summary": "Revoke a token", "operationId": "revokeToken", "security": API_ONLY,
                   "parameters": [_USER_ID, {"name": "token_id", "in": "path", "required": True,
                                             "schema": {"type": "string", "minLength": 1}}],
                   "responses": {"204": {"description": "revoked"}, **errors(404)}},
    },
    "/v1/users/{user_id}/invites": {
        "post": {"summary": "A one-time sign-in link for a resident's phone", "operationId": "createInvite",
                 "security": API_ONLY, "parameters": [_USER_ID], "requestBody": _body("NewInvite", required=False),
                 "responses": {"201": json_content(ref("Invite"), "the invite, its code shown once"),
                               **errors(404, 409)}},
        "get": {"summary": "The user's invites, without codes", "operationId": "listInvites",
                "security": API_ONLY, "parameters": [_USER_ID],
                "responses": {"200": json_content(_list("invites", "InviteInfo"), "the invites"), **errors(404)}},
    },
    "/v1/invites/redeem": {
        "post": {"summary": "Exchange an invite's code for an access token, once", "operationId": "redeemInvite",
                 "description": "No credentials: the code is one. Unknown, used and expired codes get the same 401.",
                 "security": [], "requestBody": _body("Redeem"),
                 "responses": {"201": json_content(ref("SignedIn"), "the phone's own access token"), **errors(429)}},
    },
    "/v1/users/{user_id}/pairings": {
        "post": {"summary": "A one-time pairing link for a door station (`intercom pair LINK` on the board)",
                 "operationId": "createPairing", "security": API_ONLY, "parameters": [_USER_ID],
                 "requestBody": _body("NewPairing", required=False),
                 "responses": {"201": json_content(ref("Invite"), "the pairing, its code shown once"),
                               **errors(404, 409)}},
    },
    "/v1/pairings/redeem": {
        "post": {"summary": "Exchange a door's pairing code for the door's access token, once",
                 "operationId": "redeemPairing",
                 "description": "No credentials: the code is one. Unknown, used and expired codes, and a "
                                "resident's invite code, get the same 401; wrong codes count against the "
                                "address like failed sign-ins (429 beyond).",
                 "security": [], "requestBody": _body("Redeem"),
                 "responses": {"201": json_content(ref("SignedIn"), "the door's own access token"), **errors(429)}},
    },
    "/v1/me": {
        "get": {"summary": "Who this access token belongs to, its site and the site's users", "operationId": "getMe",
                "security": PARTY_ONLY,
                "responses": {"200": json_content(ref("Me"), "the signed-in user"), **errors()}},
    },
    "/v1/me/token": {
        "delete": {"summary": "Sign out: revoke the access token given", "operationId": "signOut",
                   "security": PARTY_ONLY,
                   "responses": {"204": {"description": "revoked"}, **errors()}},
    },
    "/v1/me/push": {
        "get": {"summary": "This user's devices that ring by Web Push when their app is closed",
                "operationId": "listPushDevices", "security": PARTY_ONLY,
                "responses": {"200": json_content(_list("subscriptions", "PushDevice"), "the devices"), **errors()}},
    },
    "/v1/me/devices/{device_id}/push": {
        "put": {"summary": "Ring this device by Web Push when its app is closed", "operationId": "subscribePush",
                "description": "Replaces the device's previous subscription. A user has at most "
                               "push.subscriptions_per_user devices subscribed (409 beyond). The subscription "
                               "ends with the access token that made it.",
                "security": PARTY_ONLY, "parameters": [_DEVICE_ID], "requestBody": _body("PushSubscription"),
                "responses": {"200": json_content(ref("PushDevice"), "subscribed"), **errors(409)}},
        "delete": {"summary": "Stop ringing this device by Web Push", "operationId": "unsubscribePush",
                   "security": PARTY_ONLY, "parameters": [_DEVICE_ID],
                   "responses": {"204": {"description": "not subscribed (any more)"}, **errors()}},
    },
    "/v1/me/devices/{device_id}/push/test": {
        "post": {"summary": "Send this device a test notification", "operationId": "testPush",
                 "security": PARTY_ONLY, "parameters": [_DEVICE_ID],
                 "responses": {"202": json_content(ref("PushTest"), "queued for the push service"), **errors(404)}},
    },
    "/v1/push/public_key": {
        "get": {"summary": "The server's VAPID public key, for PushManager.subscribe", "operationId": "pushKey",
                "security": [], "responses": {"200": json_content(ref("PushKey"), "the key")}},
    },
    "/v1/direct_calls": {
        "get": {"summary": "Call history, newest first", "operationId": "listCalls", "security": API_OR_PARTY,
                "description": "With an access token: only the calls its user was a party of.",
                "parameters": [{"name": "user_id", "in": "query", "required": False,
                                "schema": {"type": "string", "pattern": ID_PATTERN}}, LIMIT, CALLS_NEXT],
                "responses": {"200": json_content(_page("calls", "Call"), "a page of calls"), **errors(403, 404)}},
    },
    "/v1/direct_calls/{call_id}": {
        "get": {"summary": "One call with its timeline", "operationId": "getCall", "security": API_OR_PARTY,
                "parameters": [CALL_ID],
                "responses": {"200": json_content(ref("CallWithTimeline"), "the call"), **errors(404)}},
    },
    "/v1/direct_calls/{call_id}/snapshot": {
        "get": {"summary": "The visitor's picture taken with the dial", "operationId": "getSnapshot",
                "security": API_OR_PARTY, "parameters": [CALL_ID],
                "responses": {"200": {"description": "the JPEG",
                                      "content": {"image/jpeg": {"schema": {"type": "string", "format": "binary"}}}},
                              **errors(404)}},
    },
    "/v1/direct_calls/{call_id}/message": {
        "get": {"summary": "The visitor's message (MP4: the door camera's H.264 and AAC audio)",
                "operationId": "getMessage", "security": API_OR_PARTY, "parameters": [CALL_ID],
                "description": "With an access token: residents of the call only. Range requests are served.",
                "responses": {"200": {"description": "the MP4",
                                      "content": {"video/mp4": {"schema": {"type": "string", "format": "binary"}}}},
                              "206": {"description": "the range asked for",
                                      "content": {"video/mp4": {"schema": {"type": "string", "format": "binary"}}}},
                              **errors(404)}},
        "put": {"summary": "The door sends its visitor's message for a call nobody answered",
                "operationId": "putMessage", "security": PARTY_ONLY, "parameters": [CALL_ID],
                "description": "The call's door only, with its own token; at most messages.max_mb. A second "
                               "upload of the same call is 409 (the door takes it as sent). The body is the MP4 "
                               "file (the door labels it video/mp4; any type is taken).",
                "requestBody": {"required": True, "content": {"application/octet-stream": {
                    "schema": {"type": "string", "format": "binary"}}}},
                "responses": {"201": json_content({"type": "object", "required": ["call_id", "bytes"], "properties": {
                    "call_id": {"type": "string"}, "bytes": {"type": "integer"}}}, "kept"),
                              "413": json_content(ref("Error"), "larger than messages.max_mb"), **errors(404, 409)}},
        "delete": {"summary": "Delete the visitor's message", "operationId": "deleteMessage",
                   "security": PARTY_ONLY, "parameters": [CALL_ID],
                   "responses": {"204": {"description": "deleted"}, **errors(404)}},
    },
    "/v1/direct_calls/{call_id}/decline": {
        "post": {"summary": "Decline a ringing call from a notification, without the WebSocket",
                 "operationId": "declineCall", "security": PARTY_ONLY, "parameters": [CALL_ID],
                 "requestBody": _body("Decline"),
                 "responses": {"204": {"description": "declined"}, **errors(403, 404, 409)}},
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
        "responses": {f"E{s}": json_content(ref("Error"), d) for s, d in
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
