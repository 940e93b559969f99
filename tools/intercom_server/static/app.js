// The resident web app: ES modules with no framework and no build step, so the server ships
// them as they are and the Content-Security-Policy can allow nothing but this origin. Their
// types are checked by TypeScript from the JSDoc comments (`make check`).
//
// It speaks protocol v1 (docs/protocol.md) over one WebSocket (connection.js), and the
// Platform API with the phone's own access token for the history and the visitor's pictures
// (session.js). Ringing and calls are calls.js; the home screen is history.js; ringing with
// the app closed is push.js with sw.js. This module signs in and out and wires the page.
//
// With the app closed, the phone rings by Web Push: sw.js shows the notification, and its
// Answer opens this page at /#answer=CALL_ID, which answers that call as soon as it rings here.

import { changeQuietHours, renderAvailability, switchAway, switchDnd } from "./availability.js";
import * as calls from "./calls.js";
import { connect, disconnect, isConnecting, isOnline, reconnect } from "./connection.js";
import { loadHistory, refreshHistory, renderDoors, selectTab } from "./history.js";
import { pushState, pushSubscription, renderPush, switchPush, testPush } from "./push.js";
import { banner, input, $ } from "./screens.js";
import { api, inviteCode, loadSession, redeem, saveSession, session } from "./session.js";
import { app, hooks } from "./state.js";

// For tests and for anyone debugging from the browser's console.
Object.assign(window, {
  intercom: {
    get online() { return isOnline(); },
    get ringing() { const { ringing } = calls.current(); return ringing && ringing.call_id; },
    get call() {
      const { call } = calls.current();
      return call && { call_id: call.call_id, role: call.role, state: call.pc.connectionState };
    },
    get pc() { const { call } = calls.current(); return call && call.pc; },
    get push() { return pushState(); },
  },
});

/** @param {string} code */
async function signInWith(code) {
  $("signin-error").hidden = true;
  try {
    await redeem(code);
    await start();
  } catch (error) {
    showSignIn(`Could not sign in: ${/** @type {Error} */ (error).message}`);
  }
}

/** @param {string | null} message */
function showSignIn(message) {
  $("home-screen").hidden = true;
  $("signin-screen").hidden = false;
  if (message) {
    $("signin-error").textContent = message;
    $("signin-error").hidden = false;
  }
}

/** @param {string} [message] why, when the resident did not choose to */
async function signOut(message) {
  const token = app.session && app.session.access_token;
  disconnect();
  saveSession(null);
  // The server forgets this phone's subscription with its token; the browser forgets it too.
  pushSubscription().then((sub) => sub && sub.unsubscribe()).catch(() => {});
  if (token && !message) {
    // Revoke the token on the server, so a copy left anywhere is worthless.
    await fetch("/v1/me/token", { method: "DELETE", headers: { Authorization: `Bearer ${token}` } }).catch(() => {});
  }
  showSignIn(message || "Signed out. Open an invite link to sign in again.");
}

async function start() {
  $("signin-screen").hidden = true;
  const mine = session();
  try {
    app.me = await (await api("/v1/me")).json();
  } catch {
    if (!app.session) return; // signed out by api()
    // The server is unreachable: show what we know and keep trying.
    app.me = app.me || { user: { user_id: mine.user_id, display_name: mine.display_name || mine.user_id, kind: "resident" },
                         site: { site_id: "", name: "Intercom" }, users: [] };
    banner("Cannot reach the server. Trying again…");
    setTimeout(start, 3000);
    return;
  }
  const me = /** @type {import("./state.js").Me} */ (app.me);
  self.sessionStore.put(mine).catch(() => {}); // a session from before the worker needed it
  app.names.clear();
  for (const user of me.users) app.names.set(user.user_id, user.display_name);
  $("site-name").textContent = me.site.name;
  $("who").textContent = `Signed in as ${me.user.display_name}`;
  $("home-screen").hidden = false;
  renderDoors(calls.lookOutside);
  loadHistory(true);
  renderPush();
  renderAvailability(me);
  if (!isConnecting()) connect({ held: calls.held, signedIn: calls.resync, event: calls.onEvent });
}

function wire() {
  hooks.signOut = signOut;
  hooks.historyChanged = refreshHistory;
  $("signin-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const code = inviteCode(input("invite-input").value);
    if (code) signInWith(code);
    else showSignIn("That is not an invite link. It looks like https://…/#invite=…");
  });
  $("answer").addEventListener("click", calls.answer);
  $("decline").addEventListener("click", calls.decline);
  $("hangup").addEventListener("click", calls.hangUp);
  $("open-door").addEventListener("click", calls.openDoor);
  $("mute").addEventListener("click", calls.toggleMute);
  $("unmute-visitor").addEventListener("click", calls.unmuteVisitor);
  $("signout").addEventListener("click", () => signOut());
  $("history-more").addEventListener("click", () => loadHistory(false));
  $("tab-calls").addEventListener("click", () => selectTab("calls"));
  $("tab-openings").addEventListener("click", () => selectTab("openings"));
  $("push-switch").addEventListener("change", switchPush);
  $("push-test").addEventListener("click", testPush);
  $("dnd-switch").addEventListener("change", switchDnd);
  $("quiet-switch").addEventListener("change", changeQuietHours);
  for (const id of ["quiet-start", "quiet-end"]) {
    $(id).addEventListener("change", () => { if (input("quiet-switch").checked) changeQuietHours(); });
  }
  $("away-switch").addEventListener("change", switchAway);
  if (navigator.serviceWorker) {
    navigator.serviceWorker.addEventListener("message", (event) => {
      if (event.data && event.data.type === "answer") calls.answerFromNotification(event.data.call_id);
    });
  }
  for (const kind of ["pointerdown", "keydown"]) {
    document.addEventListener(kind, () => calls.ringtone.unlock(), { capture: true });
  }
  window.addEventListener("online", () => { if (app.session) reconnect(); });
}

function inviteFromAddress() {
  const code = inviteCode(location.hash);
  if (code) history.replaceState(null, "", location.pathname); // the code is spent: keep it out of history
  return code;
}

app.session = loadSession();
wire();
if (navigator.serviceWorker) navigator.serviceWorker.register("/sw.js").catch(() => {});
// An invite opened while the app is already open arrives as a change of the fragment only.
window.addEventListener("hashchange", () => {
  const code = inviteFromAddress();
  if (code) {
    disconnect();
    signInWith(code);
  }
});
/** A door's pairing link opened here: say where it belongs instead of showing the app.
 * It is not spent: only `intercom pair` on the door redeems it. */
function pairingFromAddress() {
  if (!/^#pair=[A-Za-z0-9_-]{16,200}$/.test(location.hash)) return false;
  for (const screen of document.querySelectorAll(".screen")) /** @type {HTMLElement} */ (screen).hidden = true;
  $("pairing-command").textContent = `intercom pair '${location.href}'`;
  $("pairing-screen").hidden = false;
  return true;
}

calls.answerFromAddress();
const firstCode = inviteFromAddress();
if (pairingFromAddress()) { /* nothing else on this page */ }
else if (firstCode) signInWith(firstCode);
else if (app.session) start();
else showSignIn(null);
