// "This phone": ringing while the app is closed (Web Push, docs/protocol.md §Web Push).

import { input, $, toast } from "./screens.js";
import { api, session } from "./session.js";

const PUSH_SUBSCRIBE_MS = 20000;

/** Why this browser cannot ring with the app closed, or null when it can. */
function pushUnavailable() {
  const apple = /iPhone|iPad|iPod/.test(navigator.userAgent)
    || (navigator.platform === "MacIntel" && navigator.maxTouchPoints > 1);
  const installed = /** @type {{standalone?: boolean}} */ (navigator).standalone === true
    || matchMedia("(display-mode: standalone)").matches;
  if (!window.isSecureContext) {
    return "Not over plain http: open the app at its https:// address to switch this on.";
  }
  if (apple && !installed) {
    return "On iPhone and iPad (iOS 16.4 or later) only from the home screen: tap Share, then "
           + "\u201cAdd to Home Screen\u201d, open Intercom from there and switch this on.";
  }
  if (!("serviceWorker" in navigator) || !("PushManager" in window) || !("Notification" in window)) {
    return "This browser cannot ring when the app is closed. Keep the app open to be rung.";
  }
  if (Notification.permission === "denied") {
    return "Notifications are blocked for this site. Allow them in the browser's site settings, then switch this on.";
  }
  return null;
}

/** This browser's push subscription, if it has one. */
export async function pushSubscription() {
  if (!("serviceWorker" in navigator) || !("PushManager" in window)) return null;
  const reg = await navigator.serviceWorker.ready;
  return reg.pushManager.getSubscription();
}

/** @param {boolean} on @param {string} text */
function showPush(on, text) {
  input("push-switch").checked = on;
  $("push-switch").setAttribute("aria-checked", String(on));
  $("push-state").textContent = text;
  $("push-test").hidden = !on;
}

function devicePath() {
  return `/v1/me/devices/${encodeURIComponent(session().device_id)}/push`;
}

/** The switch as it is: on only when this browser and the server both have the subscription. */
export async function renderPush() {
  const why = pushUnavailable();
  input("push-switch").disabled = Boolean(why);
  if (why) {
    showPush(false, why);
    return;
  }
  try {
    const [sub, listed] = await Promise.all([pushSubscription(), api("/v1/me/push").then((r) => r.json())]);
    const mine = listed.subscriptions.find((/** @type {{device_id: string}} */ s) => s.device_id === session().device_id);
    if (sub && mine) showPush(true, `On: this phone rings when the app is closed (through ${new URL(mine.push_service).host}).`);
    else showPush(false, "Off: this phone rings only while the app is open.");
  } catch {
    showPush(false, "Could not check with the server whether this phone rings when the app is closed.");
  }
}

export async function switchPush() {
  const toggle = input("push-switch");
  const wanted = toggle.checked;
  toggle.disabled = true;
  try {
    if (wanted) await pushOn();
    else await pushOff();
  } catch (error) {
    showPush(false, `Could not switch it on: ${/** @type {Error} */ (error).message}`);
    toggle.disabled = false;
    return;
  }
  toggle.disabled = false;
  await renderPush();
}

async function pushOn() {
  // Asked inside the tap, as browsers require; the rest may wait on the network.
  const permission = await Notification.requestPermission();
  if (permission !== "granted") {
    throw new Error(permission === "denied"
      ? "notifications are blocked for this site; allow them in the browser's site settings"
      : "notifications were not allowed");
  }
  const { public_key: key } = await (await fetch("/v1/push/public_key")).json();
  const reg = await navigator.serviceWorker.ready;
  let sub = await reg.pushManager.getSubscription();
  if (sub && !sameKey(sub.options.applicationServerKey, key)) {
    await sub.unsubscribe(); // made for another server key: it would be refused
    sub = null;
  }
  try {
    // A browser that cannot reach its vendor's push service waits for it, with no end.
    /** @type {Promise<never>} */
    const late = new Promise((_, reject) => setTimeout(
      () => reject(new Error("it did not answer; check this phone's internet connection")), PUSH_SUBSCRIBE_MS));
    sub = sub || await Promise.race([reg.pushManager.subscribe({ userVisibleOnly: true, applicationServerKey: key }), late]);
  } catch (error) {
    throw new Error(`the browser's push service refused (${/** @type {Error} */ (error).message})`);
  }
  const response = await fetch(devicePath(), {
    method: "PUT", body: JSON.stringify(sub.toJSON()),
    headers: { Authorization: `Bearer ${session().access_token}`, "Content-Type": "application/json" },
  });
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    throw new Error(body.error ? body.error.message : `the server answered ${response.status}`);
  }
}

/** @param {ArrayBuffer | null} buffer @param {string} base64url */
function sameKey(buffer, base64url) {
  if (!buffer) return false;
  const bytes = new Uint8Array(buffer);
  const text = btoa(String.fromCharCode(...bytes)).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  return text === base64url;
}

async function pushOff() {
  const sub = await pushSubscription();
  if (sub) await sub.unsubscribe();
  await fetch(devicePath(), { method: "DELETE", headers: { Authorization: `Bearer ${session().access_token}` } });
}

export async function testPush() {
  const response = await fetch(`${devicePath()}/test`, {
    method: "POST", headers: { Authorization: `Bearer ${session().access_token}` },
  });
  toast(response.ok ? "Test notification sent. Lock the phone: it should show in a few seconds."
                    : "The test could not be sent; switch ringing off and on again.");
}

export const pushState = () => ({ on: input("push-switch").checked, text: $("push-state").textContent });
