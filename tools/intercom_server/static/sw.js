// The service worker: the app shell for when the network is down, and the ring of a phone
// whose app is closed (Web Push, docs/protocol.md §Web Push).
importScripts("/keystore.js");

const CACHE = "intercom-shell-v2";
const SHELL = ["/", "/app.js", "/app.css", "/keystore.js", "/manifest.webmanifest", "/icon.svg"];
// How long the worker looks for the visitor's picture: the door sends it a frame after the dial.
const PICTURE_WAIT_MS = 5000;
// Calls whose ring was tapped (answered or declined) while this worker runs: a ring for one of
// them is never shown again, neither the picture version still being fetched at the tap nor a
// push message the push service delivers twice.
const handled = new Set();

self.addEventListener("install", (event) => {
  event.waitUntil(caches.open(CACHE).then((cache) => cache.addAll(SHELL)).then(() => self.skipWaiting()));
});

self.addEventListener("activate", (event) => {
  event.waitUntil(caches.keys()
    .then((keys) => Promise.all(keys.filter((k) => k !== CACHE).map((k) => caches.delete(k))))
    .then(() => self.clients.claim()));
});

self.addEventListener("fetch", (event) => {
  const url = new URL(event.request.url);
  if (event.request.method !== "GET" || url.origin !== self.location.origin || !SHELL.includes(url.pathname)) {
    return;
  }
  // Network first, so an updated server ships an updated app; the cache only when offline.
  event.respondWith(fetch(event.request)
    .then((response) => {
      const copy = response.clone();
      caches.open(CACHE).then((cache) => cache.put(event.request, copy));
      return response;
    })
    .catch(() => caches.match(event.request)));
});

// -- Web Push ---------------------------------------------------------------------------------

self.addEventListener("push", (event) => {
  let message = {};
  try {
    message = event.data ? event.data.json() : {};
  } catch {
    // not ours, or damaged: still show something, as browsers require of every push
  }
  event.waitUntil(onPush(message));
});

function tagOf(message) {
  return message.call_id ? `call-${message.call_id}` : "intercom-test";
}

function clock(isoTime) {
  return new Date(isoTime || Date.now()).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

async function onPush(message) {
  const tag = tagOf(message);
  const door = message.caller ? message.caller.display_name : "Intercom";
  if (message.type === "ring") {
    // A ring that comes after its call's end (answered or missed shown already) is not shown.
    const shown = await self.registration.getNotifications({ tag });
    if (shown.some((n) => n.data && n.data.type !== "ring")) return;
    // The app on screen rings by itself: one ring per call on a phone, never two.
    const windows = await self.clients.matchAll({ type: "window", includeUncontrolled: true });
    if (windows.some((w) => w.visibilityState === "visible") || handled.has(message.call_id)) return;
    await showRing(message, door, tag, null);
    // The picture follows the ring: it is replaced silently once the picture is here. The
    // check and the show run without a pause between them, so a tap cannot slip in.
    const picture = await fetchPicture(message.snapshot_url, PICTURE_WAIT_MS);
    const still = await self.registration.getNotifications({ tag });
    if (picture && !handled.has(message.call_id) && still.some((n) => n.data && n.data.type === "ring")) {
      await showRing(message, door, tag, picture);
    }
    return;
  }
  if (message.type === "answered") {
    const by = message.by && message.by.display_name ? message.by.display_name : "someone else";
    await self.registration.showNotification(`Answered by ${by}`, {
      tag, body: `${door} at ${clock(message.created_at)}`, icon: "/icon.svg", silent: true,
      data: { type: "answered", call_id: message.call_id },
    });
    return;
  }
  if (message.type === "missed") {
    const picture = await fetchPicture(message.snapshot_url, 0);
    await self.registration.showNotification(`Missed: ${door} at ${clock(message.created_at)}`, {
      tag, body: "Nobody answered. Open the app to see the history.", icon: "/icon.svg",
      ...(picture ? { image: picture } : {}), data: { type: "missed", call_id: message.call_id },
    });
    return;
  }
  if (message.type === "test") {
    await self.registration.showNotification("Intercom test", {
      tag, body: "This phone rings when the app is closed.", icon: "/icon.svg", data: { type: "test" },
    });
    return;
  }
  await self.registration.showNotification("Intercom", { tag, body: "Open the app to see what happened.", icon: "/icon.svg" });
}

function showRing(message, door, tag, picture) {
  return self.registration.showNotification(door, {
    tag,
    body: `Someone is at the door · ${clock(message.created_at)}`,
    icon: "/icon.svg",
    ...(picture ? { image: picture } : {}),
    vibrate: [400, 200, 400, 200, 400],
    requireInteraction: true, // it stays until handled
    renotify: false, // adding the picture must not ring a second time
    timestamp: Date.parse(message.created_at) || Date.now(),
    actions: [{ action: "answer", title: "Answer" }, { action: "decline", title: "Decline" }],
    data: { type: "ring", call_id: message.call_id, device_id: message.device_id },
  });
}

// The picture with the phone's own token (a push message carries none), as a data: URL:
// a notification cannot show a blob: URL from a worker.
async function fetchPicture(path, waitMs) {
  const session = await self.sessionStore.get().catch(() => null);
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

async function dataUrl(blob) {
  const bytes = new Uint8Array(await blob.arrayBuffer());
  let text = "";
  for (let i = 0; i < bytes.length; i += 0x8000) text += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return `data:${blob.type || "image/jpeg"};base64,${btoa(text)}`;
}

self.addEventListener("notificationclick", (event) => {
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
async function closeRing(tag) {
  const shown = await self.registration.getNotifications({ tag });
  shown.filter((n) => n.data && n.data.type === "ring").forEach((n) => n.close());
}

async function declineCall(data) {
  const session = await self.sessionStore.get();
  if (!session) return;
  await fetch(`/v1/direct_calls/${encodeURIComponent(data.call_id)}/decline`, {
    method: "POST",
    headers: { Authorization: `Bearer ${session.access_token}`, "Content-Type": "application/json" },
    body: JSON.stringify({ device_id: data.device_id || session.device_id }),
  }).catch(() => {});
}

async function openApp(callId) {
  const url = callId ? `/#answer=${encodeURIComponent(callId)}` : "/";
  const windows = await self.clients.matchAll({ type: "window", includeUncontrolled: true });
  const open = windows.find((w) => new URL(w.url).origin === self.location.origin);
  if (open) {
    await open.focus();
    if (callId) open.postMessage({ type: "answer", call_id: callId });
    return;
  }
  await self.clients.openWindow(url);
}

// A browser may renew a subscription by itself (Firefox does): tell the server the new one.
self.addEventListener("pushsubscriptionchange", (event) => {
  event.waitUntil((async () => {
    const session = await self.sessionStore.get();
    const old = event.oldSubscription;
    const subscription = event.newSubscription || (old && await self.registration.pushManager.subscribe(old.options));
    if (!session || !subscription) return;
    await fetch(`/v1/me/devices/${encodeURIComponent(session.device_id)}/push`, {
      method: "PUT",
      headers: { Authorization: `Bearer ${session.access_token}`, "Content-Type": "application/json" },
      body: JSON.stringify(subscription.toJSON()),
    });
  })());
});
