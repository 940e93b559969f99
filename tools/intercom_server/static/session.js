// The phone's session (its own access token, kept in the page and for the service worker),
// invites, and the Platform API with that token.

import "/keystore.js"; // self.sessionStore: the session where the service worker can read it
import { app, hooks } from "./state.js";

/** @typedef {import("./state.js").Session} Session */

const SESSION_KEY = "intercom.session";
export const REVOKED = "This phone's access was revoked. Ask your installer for a new invite.";

/** @returns {Session | null} */
export function loadSession() {
  try {
    const value = JSON.parse(localStorage.getItem(SESSION_KEY) || "null");
    return value && value.user_id && value.access_token ? value : null;
  } catch {
    return null;
  }
}

/** @param {Session | null} value */
export function saveSession(value) {
  app.session = value;
  if (value) localStorage.setItem(SESSION_KEY, JSON.stringify(value));
  else localStorage.removeItem(SESSION_KEY);
  (value ? self.sessionStore.put(value) : self.sessionStore.clear()).catch(() => {});
}

/** @returns {Session} the signed-in session (the callers run only while there is one) */
export function session() {
  if (!app.session) throw new Error("signed out");
  return app.session;
}

/** One id per browser install, kept across sign-ins, so the server sees one phone coming
 * back rather than a new device each time. */
function deviceId() {
  let id = localStorage.getItem("intercom.device_id");
  if (!id) {
    id = "web-" + Array.from(crypto.getRandomValues(new Uint8Array(6)), (b) => b.toString(16).padStart(2, "0")).join("");
    localStorage.setItem("intercom.device_id", id);
  }
  return id;
}

/** @param {string} code */
export async function redeem(code) {
  const response = await fetch("/v1/invites/redeem", {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ code }),
  });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error ? body.error.message : `the server answered ${response.status}`);
  saveSession({ user_id: body.user.user_id, access_token: body.access_token, device_id: deviceId(),
                display_name: body.user.display_name });
}

/** The invite code in a link or typed alone, or null.
 * @param {string} text */
export function inviteCode(text) {
  const match = /(?:^|[#&?])invite=([A-Za-z0-9_-]+)/.exec(text.trim());
  if (match) return match[1];
  return /^[A-Za-z0-9_-]{16,}$/.test(text.trim()) ? text.trim() : null;
}

/** A Platform API request with the phone's own token; a revoked token signs the phone out.
 * @param {string} path
 * @param {RequestInit} [init] */
export async function api(path, init = {}) {
  const response = await fetch(path, { ...init, headers: { ...init.headers, Authorization: `Bearer ${session().access_token}` } });
  if (response.status === 401) {
    hooks.signOut(REVOKED);
    throw new Error("signed out");
  }
  if (!response.ok) throw new Error(`${path}: ${response.status}`);
  return response;
}

/** @param {string} path */
export async function blobUrl(path) {
  return URL.createObjectURL(await (await api(path)).blob());
}
