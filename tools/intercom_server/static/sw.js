// The service worker: the app shell for when the network is down, and the ring of a phone
// whose app is closed (Web Push, docs/protocol.md §Web Push).
importScripts("/keystore.js");

/** The worker's own global scope, typed as what it is (keystore.js added the session store).
 * @type {ServiceWorkerGlobalScope & {sessionStore: SessionStore}} */
const worker = /** @type {any} */ (self);

/**
 * A push message from the server (docs/protocol.md §Web Push).
 * @typedef {object} PushMessage
 * @property {string} [type] ring, answered, missed or test
 * @property {string} [call_id]
 * @property {string} [device_id]
 * @property {{display_name: string}} [caller]
 * @property {{display_name?: string}} [by]
 * @property {string} [created_at]
 * @property {string} [snapshot_url]
 */
/** @typedef {{type?: string, call_id?: string, device_id?: string}} NotificationData */
/** What Chromium and Firefox show beyond the DOM's own NotificationOptions type.
 * @typedef {NotificationOptions & {image?: string, vibrate?: number[], renotify?: boolean, timestamp?: number,
 *   actions?: {action: string, title: string}[]}} RichNotification */

const CACHE = "intercom-shell-v5";
const SHELL = ["/", "/app.js", "/state.js", "/screens.js", "/session.js", "/connection.js", "/calls.js", "/history.js",
               "/push.js", "/availability.js", "/protocol.js", "/app.css", "/keystore.js", "/manifest.webmanifest", "/icon.svg"];
// How long the worker looks for the visitor's picture: the door sends it a frame after the dial.
const PICTURE_WAIT_MS = 5000;
// Calls whose ring was tapped (answered or declined) while this worker runs: a ring for one of
// them is never shown again, neither the picture version still being fetched at the tap nor a
// push message the push service delivers twice.
const handled = new Set();

worker.addEventListener("install", (event) => {
  event.waitUntil(caches.open(CACHE).then((cache) => cache.addAll(SHELL)).then(() => worker.skipWaiting()));
});

worker.addEventListener("activate", (event) => {
  event.waitUntil(caches.keys()
    .then((keys) => Promise.all(keys.filter((k) => k !== CACHE).map((k) => caches.delete(k))))
    .then(() => worker.clients.claim()));
});

worker.addEventListener("fetch", (event) => {
  const url = new URL(event.request.url);
  if (event.request.method !== "GET" || url.origin !== worker.location.origin || !SHELL.includes(url.pathname)) {
    return;
  }
  // Network first, so an updated server ships an updated app; the cache only when offline.
  event.respondWith(fetch(event.request)
    .then((response) => {
      const copy = response.clone();
      caches.open(CACHE).then((cache) => cache.put(event.request, copy));
      return response;
    })
    .catch(() => caches.match(event.request).then((cached) => cached || Response.error())));
});

// -- Web Push ---------------------------------------------------------------------------------

worker.addEventListener("push", (event) => {
  let message = {};
  try {
    message = event.data ? event.data.json() : {};
  } catch {
    // not ours, or damaged: still show something, as browsers require of every push
  }
  event.waitUntil(onPush(message));
});

/** @param {PushMessage} message */
function tagOf(message) {
  return message.call_id ? `call-${message.call_id}` : "intercom-test";
}

/** @param {string | undefined} isoTime */
function clock(isoTime) {
  return new Date(isoTime || Date.now()).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

/** @param {PushMessage} message */
async function onPush(message) {
  const tag = tagOf(message);
  const door = message.caller ? message.caller.display_name : "Intercom";
  if (message.type === "ring") {
    // A ring that comes after its call's end (answered or missed shown already) is not shown.
    const shown = await worker.registration.getNotifications({ tag });
    if (shown.some((n) => n.data && n.data.type !== "ring")) return;
    // The app on screen rings by itself: one ring per call on a phone, never two.
    const windows = await worker.clients.matchAll({ type: "window", includeUncontrolled: true });
    if (windows.some((w) => w.visibilityState === "visible") || handled.has(message.call_id)) return;
    await showRing(message, door, tag, null);
    await closeIfTapped(message, tag);
    // The picture follows the ring: it is replaced silently once the picture is here. A tap
    // before the check stops the show; a tap during the show is caught by closeIfTapped.
    const picture = await fetchPicture(message.snapshot_url, PICTURE_WAIT_MS);
    const still = await worker.registration.getNotifications({ tag });
    if (picture && !handled.has(message.call_id) && still.some((n) => n.data && n.data.type === "ring")) {
      await showRing(message, door, tag, picture);
      await closeIfTapped(message, tag);
    }
    return;
  }
  if (message.type === "answered") {
    const by = message.by && message.by.display_name ? message.by.display_name : "someone else";
    await worker.registration.showNotification(`Answered by ${by}`, {
      tag, body: `${door} at ${clock(message.created_at)}`, icon: "/icon.svg", silent: true,
      data: { type: "answered", call_id: message.call_id },
    });
    return;
  }
  if (message.type === "missed") {
    const picture = await fetchPicture(message.snapshot_url, 0);
    await worker.registration.showNotification(`Missed: ${door} at ${clock(message.created_at)}`, {
      tag, body: "Nobody answered. Open the app to see the history.", icon: "/icon.svg",
      ...(picture ? { image: picture } : {}), data: { type: "missed", call_id: message.call_id },
    });
    return;
  }
  if (message.type === "message") {
    const picture = await fetchPicture(message.snapshot_url, 0);
    await worker.registration.showNotification(`New message from ${door}`, {
      tag, body: `Left at ${clock(message.created_at)}. Open the app to play it.`, icon: "/icon.svg",
      ...(picture ? { image: picture } : {}), data: { type: "message", call_id: message.call_id },
    });
    return;
  }
  if (message.type === "test") {
    await worker.registration.showNotification("Intercom test", {
      tag, body: "This phone rings when the app is closed.", icon: "/icon.svg", data: { type: "test" },
    });
    return;
  }
  await worker.registration.showNotification("Intercom", { tag, body: "Open the app to see what happened.", icon: "/icon.svg" });
}

/** A tap that came while the ring was being shown closed the notification it saw, not the one
 * this show puts in its place: close that one too.
 * @param {PushMessage} message @param {string} tag */
async function closeIfTapped(message, tag) {
  if (handled.has(message.call_id)) await closeRing(tag);
}

/** @param {PushMessage} message @param {string} door @param {string} tag @param {string | null} picture */
function showRing(message, door, tag, picture) {
  return worker.registration.showNotification(door, /** @type {RichNotification} */ ({
    tag,
    body: `Someone is at the door · ${clock(message.created_at)}`,
    icon: "/icon.svg",
    ...(picture ? { image: picture } : {}),
    vibrate: [400, 200, 400, 200, 400],
    requireInteraction: true, // it stays until handled
    renotify: false, // adding the picture must not ring a second time
    timestamp: Date.parse(message.created_at || "") || Date.now(),
    actions: [{ action: "answer", title: "Answer" }, { action: "decline", title: "Decline" }],
    data: { type: "ring", call_id: message.call_id, device_id: message.device_id },
  }));
}

// The picture with the phone's own token (a push message carries none), as a data: URL:
// a notification cannot show a blob: URL from a worker.
/** @param {string | undefined} path @param {number} waitMs @returns {Promise<string | null>} */
async function fetchPicture(path, waitMs) {
  const session = await worker.sessionStore.get().catch(() => null);
  if (!path || !session) return null;
  const until = Date.now() + waitMs;
  for (;;) {
    try {
      const response = await fetch(path, { headers: { Authorization: `Bearer ${session.access_token}` } });
      if (response.ok) return await dataUrl(await response.blob());
      if (response.status !== 404) return null;
    } catch {
      return null;
    }
    if (Date.now() + 250 > until) return null;
    await new Promise((resolve) => setTimeout(resolve, 250)); // the door sends it a frame later
  }
}

/** @param {Blob} blob */
async function dataUrl(blob) {
  const bytes = new Uint8Array(await blob.arrayBuffer());
  let text = "";
  for (let i = 0; i < bytes.length; i += 0x8000) text += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return `data:${blob.type || "image/jpeg"};base64,${btoa(text)}`;
}

worker.addEventListener("notificationclick", (event) => {
  const data = event.notification.data || {};
  event.notification.close();
  if (data.type === "ring") handled.add(data.call_id);
  if (data.type === "ring" && event.action === "decline") {
    event.waitUntil(Promise.all([declineCall(data), closeRing(event.notification.tag)]));
    return;
  }
  // Tapping the ring, or Answer: open the app straight into the call, which it answers.
  event.waitUntil(Promise.all([openApp(data.type === "ring" ? data.call_id : null), closeRing(event.notification.tag)]));
});

// A ring shown again in the moment of the tap (its picture arriving) is closed as well.
/** @param {string} tag */
async function closeRing(tag) {
  const shown = await worker.registration.getNotifications({ tag });
  shown.filter((n) => n.data && n.data.type === "ring").forEach((n) => n.close());
}

/** @param {NotificationData} data */
async function declineCall(data) {
  const session = await worker.sessionStore.get();
  if (!session) return;
  await fetch(`/v1/direct_calls/${encodeURIComponent(String(data.call_id))}/decline`, {
    method: "POST",
    headers: { Authorization: `Bearer ${session.access_token}`, "Content-Type": "application/json" },
    body: JSON.stringify({ device_id: data.device_id || session.device_id }),
  }).catch(() => {});
}

/** @param {string | null | undefined} callId */
async function openApp(callId) {
  const url = callId ? `/#answer=${encodeURIComponent(callId)}` : "/";
  const windows = await worker.clients.matchAll({ type: "window", includeUncontrolled: true });
  const open = windows.find((w) => new URL(w.url).origin === worker.location.origin);
  if (open) {
    await open.focus();
    if (callId) open.postMessage({ type: "answer", call_id: callId });
    return;
  }
  await worker.clients.openWindow(url);
}

// A browser may renew a subscription by itself (Firefox does): tell the server the new one.
worker.addEventListener("pushsubscriptionchange", (event) => {
  event.waitUntil((async () => {
    const session = await worker.sessionStore.get();
    const old = event.oldSubscription;
    const subscription = event.newSubscription || (old && await worker.registration.pushManager.subscribe(old.options));
    if (!session || !subscription) return;
    await fetch(`/v1/me/devices/${encodeURIComponent(session.device_id)}/push`, {
      method: "PUT",
      headers: { Authorization: `Bearer ${session.access_token}`, "Content-Type": "application/json" },
      body: JSON.stringify(subscription.toJSON()),
    });
  })());
});
