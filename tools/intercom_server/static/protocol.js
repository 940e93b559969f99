// Generated from the Python package intercom_protocol (python -m intercom_protocol.javascript):
// do not edit. The wire contract is docs/protocol.md.

export const PROTOCOL_PATH = "/v1/ws";
export const REQUEST_TYPES = Object.freeze(["accept", "action", "authenticate", "deauthenticate", "decline", "dial", "end", "missed", "ping", "snapshot", "status"]);
export const EVENT_TYPES = Object.freeze(["incoming", "ringing", "accepted", "snapshot", "ended", "missed"]);
/** WebSocket close codes the server uses. */
export const CLOSE = Object.freeze({ UNAUTHENTICATED: 4401, TOKEN_REVOKED: 4403, REPLACED: 4409, SERVICE_RESTART: 1012 });
/** @typedef {"bad_request"|"unauthenticated"|"forbidden"|"not_found"|"conflict"|"rate_limited"|"too_large"|"internal"} ErrorCode */
export const ERROR_CODES = Object.freeze({ BAD_REQUEST: "bad_request", UNAUTHENTICATED: "unauthenticated", FORBIDDEN: "forbidden", NOT_FOUND: "not_found", CONFLICT: "conflict", RATE_LIMITED: "rate_limited", TOO_LARGE: "too_large", INTERNAL: "internal" });

/** @typedef {"no_answer"|"canceled"|"declined"|"other_device_accepted"|"completed"|"connection_lost"|"timed_out"|"dial_failed"|"unknown"|"unavailable"} EndReason */
export const END_REASONS = Object.freeze({ NO_ANSWER: "no_answer", CANCELED: "canceled", DECLINED: "declined", OTHER_DEVICE_ACCEPTED: "other_device_accepted", COMPLETED: "completed", CONNECTION_LOST: "connection_lost", TIMED_OUT: "timed_out", DIAL_FAILED: "dial_failed", UNKNOWN: "unknown", UNAVAILABLE: "unavailable" });
