// The resident web app: one ES module, no framework and no build step, so the server ships it
// as it is and the Content-Security-Policy can allow nothing but this origin.
//
// It speaks protocol v1 (docs/protocol.md) over one WebSocket, and the Platform API with the
// phone's own access token for the history and the visitor's pictures. SDP is exchanged
// whole: candidates are gathered before an offer or answer is sent, as the door does.
//
// With the app closed, the phone rings by Web Push: sw.js shows the notification, and its
// Answer opens this page at /#answer=CALL_ID, which answers that call as soon as it rings here.

import "/keystore.js"; // self.sessionStore: the session where the service worker can read it

const SESSION_KEY = "intercom.session";
const PUSH_SUBSCRIBE_MS = 20000;
const $ = (id) => document.getElementById(id);

const REASONS = {
  no_answer: "Nobody answered",
  canceled: "The visitor left before anyone answered",
  declined: "Declined",
  other_device_accepted: "Answered on another device",
  completed: "Call ended",
  connection_lost: "The connection was lost",
  timed_out: "The call reached its time limit",
  dial_failed: "Rang while the door was offline",
  unknown: "Interrupted when the server stopped",
};

let session = loadSession(); // {user_id, access_token, device_id, display_name}
let me = null; // {user, site, users}
const names = new Map(); // user_id -> display name
let ws = null;
let online = false;
let iceServers = [];
let nextRequest = 1;
const pending = new Map(); // request id -> {resolve, reject}
let reconnectDelay = 1000;
let reconnectTimer = null;
let ringing = null; // {call_id, caller, offer}
let call = null; // {call_id, pc, role, peerName, mic, stream}
let historyNext = null;
let historyTab = "calls";
let answerOnRing = null; // a call id the resident already answered from a notification

// For tests and for anyone debugging from the browser's console.
window.intercom = {
  get online() { return online; },
  get ringing() { return ringing && ringing.call_id; },
  get call() { return call && { call_id: call.call_id, role: call.role, state: call.pc.connectionState }; },
  get pc() { return call && call.pc; },
  get push() { return { on: $("push-switch").checked, text: $("push-state").textContent }; },
};

// -- session -------------------------------------------------------------------------------

function loadSession() {
  try {
    const value = JSON.parse(localStorage.getItem(SESSION_KEY));
    return value && value.user_id && value.access_token ? value : null;
  } catch {
    return null;
  }
}

function saveSession(value) {
  session = value;
  if (value) localStorage.setItem(SESSION_KEY, JSON.stringify(value));
  else localStorage.removeItem(SESSION_KEY);
  (value ? self.sessionStore.put(value) : self.sessionStore.clear()).catch(() => {});
}

function deviceId() {
  // One id per browser install, kept across sign-ins, so the server sees one phone
  // coming back rather than a new device each time.
  let id = localStorage.getItem("intercom.device_id");
  if (!id) {
    id = "web-" + Array.from(crypto.getRandomValues(new Uint8Array(6)), (b) => b.toString(16).padStart(2, "0")).join("");
    localStorage.setItem("intercom.device_id", id);
  }
  return id;
}

async function redeem(code) {
  const response = await fetch("/v1/invites/redeem", {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ code }),
  });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error ? body.error.message : `the server answered ${response.status}`);
  saveSession({ user_id: body.user.user_id, access_token: body.access_token, device_id: deviceId(),
                display_name: body.user.display_name });
}

function inviteCode(text) {
  const match = /(?:^|[#&?])invite=([A-Za-z0-9_-]+)/.exec(text.trim());
  if (match) return match[1];
  return /^[A-Za-z0-9_-]{16,}$/.test(text.trim()) ? text.trim() : null;
}

async function signInWith(code) {
  $("signin-error").hidden = true;
  try {
    await redeem(code);
    await start();
  } catch (error) {
    showSignIn(`Could not sign in: ${error.message}`);
  }
}

function showSignIn(message) {
  $("home-screen").hidden = true;
  $("signin-screen").hidden = false;
  if (message) {
    $("signin-error").textContent = message;
    $("signin-error").hidden = false;
  }
}

async function signOut(message) {
  const token = session && session.access_token;
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

// -- Platform API with the phone's own token ------------------------------------------------

async function api(path) {
  const response = await fetch(path, { headers: { Authorization: `Bearer ${session.access_token}` } });
  if (response.status === 401) {
    signOut("This phone's access was revoked. Ask your installer for a new invite.");
    throw new Error("signed out");
  }
  if (!response.ok) throw new Error(`${path}: ${response.status}`);
  return response;
}

async function blobUrl(path) {
  return URL.createObjectURL(await (await api(path)).blob());
}

function releasePictures(root) {
  // A blob URL holds its picture in memory until revoked: let go of the ones leaving the screen.
  for (const img of root.querySelectorAll("img")) {
    if (img.src.startsWith("blob:")) URL.revokeObjectURL(img.src);
  }
}

// -- WebSocket ------------------------------------------------------------------------------

function connect() {
  clearTimeout(reconnectTimer);
  const socket = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/v1/ws`);
  ws = socket;
  socket.onopen = async () => {
    try {
      // Claim the calls this page still holds: the server ends the ones it does not hear of,
      // and tells which of ours it still knows (the others ended while we were away).
      const held = [call && call.call_id, ringing && ringing.call_id].filter(Boolean);
      const ok = await request("authenticate", { user_id: session.user_id, access_token: session.access_token,
                                                 device_id: session.device_id, calls: held });
      iceServers = ok.ice_servers || [];
      resync((ok.calls || []).map((c) => c.call_id));
      reconnectDelay = 1000;
      setOnline(true);
    } catch (error) {
      if (error.code === "unauthenticated") {
        signOut("This phone's access was revoked. Ask your installer for a new invite.");
      } else {
        socket.close();
      }
    }
  };
  socket.onmessage = (event) => {
    let message;
    try {
      message = JSON.parse(event.data);
    } catch {
      return;
    }
    onMessage(message);
  };
  socket.onclose = (event) => {
    if (ws !== socket) return;
    ws = null;
    setOnline(false);
    for (const { reject } of pending.values()) reject(Object.assign(new Error("the connection closed"), { code: "offline" }));
    pending.clear();
    if (!session) return;
    if (event.code === 4403) {
      signOut("This phone's access was revoked. Ask your installer for a new invite.");
      return;
    }
    if (event.code === 4409) {
      banner("Intercom is open in another tab or window; this one has stopped. Reload to use it here.");
      return;
    }
    const seconds = Math.round(reconnectDelay / 1000);
    banner(`Cannot reach the server. Trying again in ${seconds} s…`);
    reconnectTimer = setTimeout(connect, reconnectDelay * (0.8 + Math.random() * 0.4));
    reconnectDelay = Math.min(reconnectDelay * 2, 15000);
  };
}

function disconnect() {
  clearTimeout(reconnectTimer);
  const socket = ws;
  ws = null;
  if (socket) socket.close(1000);
  setOnline(false);
}

function request(type, body = {}) {
  return new Promise((resolve, reject) => {
    if (!ws || ws.readyState !== WebSocket.OPEN) {
      reject(Object.assign(new Error("not connected to the server"), { code: "offline" }));
      return;
    }
    const id = String(nextRequest++);
    pending.set(id, { resolve, reject });
    ws.send(JSON.stringify({ type, id, ...body }));
  });
}

function onMessage(message) {
  if ((message.type === "ok" || message.type === "error") && pending.has(String(message.re))) {
    const { resolve, reject } = pending.get(String(message.re));
    pending.delete(String(message.re));
    if (message.type === "ok") resolve(message);
    else reject(Object.assign(new Error(message.message), { code: message.code }));
    return;
  }
  if (message.id !== undefined && message.type !== "ok" && message.type !== "error") {
    // A request from the server that a phone does not handle (the door's `action`).
    ws.send(JSON.stringify({ type: "error", re: message.id, code: "bad_request", message: "not handled by the web app" }));
    return;
  }
  const handler = { incoming: onIncoming, ended: onEnded, accepted: onAccepted, ringing: onRinging, missed: onMissed, snapshot: showVisitor }[message.type];
  if (handler) handler(message);
}

function setOnline(value) {
  online = value;
  const badge = $("connection");
  badge.dataset.state = value ? "online" : "offline";
  badge.textContent = value ? "online" : "offline";
  if (value) banner(null);
}

function banner(text) {
  $("banner").textContent = text || "";
  $("banner").hidden = !text;
}

let toastTimer = null;
function toast(text) {
  $("toast").textContent = text;
  $("toast").hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { $("toast").hidden = true; }, 5000);
}

// -- ringing --------------------------------------------------------------------------------

function resync(live) {
  if (answerOnRing && !live.includes(answerOnRing)) {
    answerOnRing = null;
    toast("That call has ended: the visitor left or someone else answered.");
  }
  if (ringing && !live.includes(ringing.call_id)) {
    stopRinging();
    toast("The ring ended while this phone was offline.");
  }
  if (call && call.call_id && !live.includes(call.call_id)) {
    closeCall();
    toast("The call ended while this phone was offline.");
  }
}

async function onIncoming(event) {
  if (call) return; // busy in a call: another device can take it
  if (ringing && ringing.call_id === event.call_id) return; // the same ring, after a reconnection
  closeNotifications(event.call_id);
  const expires = typeof event.expires_in_s === "number" ? event.expires_in_s : 60;
  ringing = { call_id: event.call_id, caller: event.caller, offer: event.offer };
  // The ring's own clock: it stops by itself if its `ended` never comes.
  const mine = ringing;
  setTimeout(() => { if (ringing === mine) stopRinging(); }, expires * 1000);
  $("ring-caller").textContent = `${event.caller.display_name} is ringing`;
  $("ring-title").textContent = event.caller.kind === "door" ? "Someone is at the door" : `${event.caller.display_name} is calling`;
  $("ring-snapshot").hidden = true;
  $("ring-screen").hidden = false;
  $("answer").disabled = false;
  $("decline").disabled = false;
  if (answerOnRing === event.call_id) {
    answerOnRing = null;
    answer(); // Answer was tapped on the notification: no second tap
    return;
  }
  ringtone.start();
  if (event.snapshot_url) await showVisitor(event);
}

// The ring on screen replaces the notification of the same call, so the phone shows one ring.
function closeNotifications(callId) {
  if (document.visibilityState !== "visible" || !navigator.serviceWorker) return;
  navigator.serviceWorker.ready
    .then((reg) => reg.getNotifications({ tag: `call-${callId}` }))
    .then((shown) => shown.forEach((n) => n.close()))
    .catch(() => {});
}

function answerFromAddress() {
  const match = /(?:^|[#&])answer=([A-Za-z0-9_-]+)/.exec(location.hash);
  if (match) history.replaceState(null, "", location.pathname);
  return match ? match[1] : null;
}

// Answer tapped on a notification while the app was open in the background.
function answerFromNotification(callId) {
  if (ringing && ringing.call_id === callId) answer();
  else if (!call) answerOnRing = callId;
}

// The door rings first and sends the visitor's picture a frame later (`snapshot`); a phone
// that starts ringing after that gets it in `incoming` instead.
async function showVisitor(event) {
  if (!ringing || ringing.call_id !== event.call_id || ringing.pictured) return;
  ringing.pictured = true;
  try {
    const url = await blobUrl(event.snapshot_url);
    if (ringing && ringing.call_id === event.call_id) {
      $("ring-snapshot").src = url;
      $("ring-snapshot").hidden = false;
    } else {
      URL.revokeObjectURL(url); // the ring ended while the picture was on its way
    }
  } catch {
    // the ring goes on without a picture
  }
}

function stopRinging() {
  ringing = null;
  ringtone.stop();
  $("ring-screen").hidden = true;
  releasePictures($("ring-screen"));
  $("ring-snapshot").removeAttribute("src");
}

async function decline() {
  const current = ringing;
  stopRinging();
  if (current) await request("decline", { call_id: current.call_id }).catch(() => {});
}

function onEnded(event) {
  if (ringing && ringing.call_id === event.call_id) {
    stopRinging();
    toast(event.reason === "canceled" ? "The visitor left." : REASONS[event.reason] || "The call ended.");
  }
  if (call && call.call_id === event.call_id) {
    closeCall();
    toast(REASONS[event.reason] || "The call ended.");
  }
  refreshHistory();
}

function onRinging(event) {
  if (call && call.call_id === event.call_id && event.devices === 0) {
    $("call-state").textContent = "The door is offline";
  }
}

function onMissed(event) {
  toast(`Missed: ${event.caller.display_name} rang while it was offline.`);
  refreshHistory();
}

// A ringtone made by the page itself: nothing to download, and it works offline.
const ringtone = {
  context: null, timer: null,
  start() {
    this.stop();
    const ring = () => {
      if (navigator.vibrate) navigator.vibrate([400, 200, 400]);
      const ctx = this.context;
      if (!ctx || ctx.state !== "running") return;
      const t = ctx.currentTime;
      for (const [offset, freq] of [[0, 880], [0.25, 660], [0.6, 880], [0.85, 660]]) {
        const osc = ctx.createOscillator();
        const gain = ctx.createGain();
        osc.frequency.value = freq;
        gain.gain.setValueAtTime(0.0001, t + offset);
        gain.gain.exponentialRampToValueAtTime(0.3, t + offset + 0.02);
        gain.gain.exponentialRampToValueAtTime(0.0001, t + offset + 0.22);
        osc.connect(gain).connect(ctx.destination);
        osc.start(t + offset);
        osc.stop(t + offset + 0.25);
      }
    };
    ring();
    this.timer = setInterval(ring, 2500);
  },
  stop() {
    if (this.timer === null) return; // not ringing: nothing to stop (and no vibration to cancel)
    clearInterval(this.timer);
    this.timer = null;
    if (navigator.vibrate) navigator.vibrate(0);
  },
  unlock() {
    // Browsers let a page make sound only after the user touched it once.
    if (!this.context && window.AudioContext) this.context = new AudioContext();
    if (this.context && this.context.state === "suspended") this.context.resume();
  },
};

// -- calls ----------------------------------------------------------------------------------

async function microphone() {
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    return { error: "The microphone is off because this page is not on a secure (https) connection. "
                    + "You can watch and open the door, but the visitor cannot hear you." };
  }
  try {
    const stream = await navigator.mediaDevices.getUserMedia({
      audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true },
    });
    return { stream, track: stream.getAudioTracks()[0] };
  } catch (error) {
    if (error.name === "NotAllowedError" || error.name === "SecurityError") {
      return { error: "Microphone access is blocked, so the visitor cannot hear you. You can still watch "
                      + "and open the door. To talk, allow the microphone in this site's settings." };
    }
    return { error: `No microphone could be used (${error.message}). You can still watch and open the door.` };
  }
}

function newCall(role, peerName, mic) {
  const pc = new RTCPeerConnection({ iceServers });
  const stream = new MediaStream();
  call = { call_id: null, pc, role, peerName, mic, stream };
  pc.ontrack = (event) => {
    stream.addTrack(event.track);
    const video = $("remote-video");
    if (video.srcObject !== stream) video.srcObject = stream;
    video.muted = false;
    video.play().catch(() => {
      // A page opened from a notification may not play sound before the resident touches it:
      // show the visitor at once, silent, and ask for the tap that lets the sound in.
      video.muted = true;
      video.play().catch(() => {});
      $("unmute-visitor").hidden = false;
    });
  };
  pc.onconnectionstatechange = () => {
    const words = { connecting: "Connecting…", connected: "Live", disconnected: "Reconnecting…", failed: "Connection failed" };
    if (call && call.pc === pc && words[pc.connectionState]) $("call-state").textContent = words[pc.connectionState];
    // The media's own clock (ICE consent): a call whose media is dead ends here too, even
    // when the server cannot be told (it is told if it can).
    if (call && call.pc === pc && pc.connectionState === "failed") {
      toast("The connection to the door was lost.");
      hangUp();
    }
  };
  $("call-title").textContent = peerName;
  $("call-state").textContent = "Connecting…";
  $("door-result").hidden = true;
  $("unmute-visitor").hidden = true;
  $("mic-note").hidden = !mic.error;
  $("mic-note").textContent = mic.error || "";
  $("mute").disabled = !mic.track;
  $("mute").setAttribute("aria-pressed", "false");
  $("mute").textContent = "Mute";
  $("open-door").disabled = false;
  $("call-screen").hidden = false;
  return call;
}

function gathered(pc) {
  // No trickle (protocol v1): every candidate goes in the one offer or answer.
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const check = () => {
      if (pc.iceGatheringState === "complete") {
        pc.removeEventListener("icegatheringstatechange", check);
        resolve();
      }
    };
    pc.addEventListener("icegatheringstatechange", check);
    setTimeout(resolve, 3000); // a slow STUN server must not hold the answer up for ever
  });
}

async function answer() {
  const current = ringing;
  if (!current) return;
  $("answer").disabled = true;
  stopRinging();
  const mic = await microphone();
  const active = newCall("callee", current.caller.display_name, mic);
  active.call_id = current.call_id;
  try {
    await active.pc.setRemoteDescription(current.offer);
    if (mic.track) active.pc.addTrack(mic.track, mic.stream); // takes the offer's audio transceiver
    for (const transceiver of active.pc.getTransceivers()) {
      if (transceiver.receiver.track.kind === "video") transceiver.direction = "recvonly";
      else if (!mic.track) transceiver.direction = "recvonly";
    }
    await active.pc.setLocalDescription(await active.pc.createAnswer());
    await gathered(active.pc);
    await request("accept", { call_id: current.call_id,
                              answer: { type: "answer", sdp: active.pc.localDescription.sdp } });
  } catch (error) {
    if (call === active) closeCall();
    toast(error.code === "conflict" ? "Someone else answered first." : `Could not answer: ${error.message}`);
  }
}

async function lookOutside(door) {
  if (call || ringing) return;
  const mic = await microphone();
  const active = newCall("caller", door.display_name, mic);
  const pc = active.pc;
  pc.addTransceiver("video", { direction: "recvonly" });
  if (mic.track) pc.addTransceiver(mic.track, { direction: "sendrecv", streams: [mic.stream] });
  else pc.addTransceiver("audio", { direction: "recvonly" });
  try {
    await pc.setLocalDescription(await pc.createOffer());
    await gathered(pc);
    const ok = await request("dial", { callees: [door.user_id], video: true,
                                       offer: { type: "offer", sdp: pc.localDescription.sdp } });
    if (call === active) active.call_id = ok.call_id;
    else request("end", { call_id: ok.call_id }).catch(() => {}); // hung up while dialling
    $("call-state").textContent = "Calling the door…";
  } catch (error) {
    if (call === active) closeCall();
    toast(`Could not reach ${door.display_name}: ${error.message}`);
  }
}

async function onAccepted(event) {
  if (!call || call.call_id !== event.call_id || call.role !== "caller") return;
  await call.pc.setRemoteDescription(event.answer).catch((error) => toast(`The call failed: ${error.message}`));
}

async function hangUp() {
  const current = call;
  closeCall();
  if (current && current.call_id) await request("end", { call_id: current.call_id }).catch(() => {});
  refreshHistory();
}

function closeCall() {
  if (!call) return;
  const { pc, mic, stream } = call;
  call = null;
  pc.close();
  if (mic.track) mic.track.stop();
  for (const track of stream.getTracks()) track.stop();
  $("remote-video").srcObject = null;
  $("call-screen").hidden = true;
}

async function openDoor() {
  if (!call || !call.call_id) return;
  const button = $("open-door");
  const result = $("door-result");
  button.disabled = true;
  result.hidden = false;
  result.dataset.outcome = "pending";
  result.textContent = "Opening…";
  try {
    await request("action", { call_id: call.call_id, name: "open_door" });
    result.dataset.outcome = "opened";
    result.textContent = "Door opened";
  } catch (error) {
    result.dataset.outcome = "refused";
    result.textContent = `The door did not open: ${error.message}`;
  } finally {
    if (call) button.disabled = false;
  }
}

function toggleMute() {
  if (!call || !call.mic.track) return;
  const track = call.mic.track;
  track.enabled = !track.enabled;
  $("mute").setAttribute("aria-pressed", String(!track.enabled));
  $("mute").textContent = track.enabled ? "Mute" : "Unmute";
}

// -- home: doors and history ------------------------------------------------------------------

function renderDoors() {
  const list = $("doors");
  list.replaceChildren();
  const doors = me.users.filter((user) => user.kind === "door");
  $("no-doors").hidden = doors.length > 0;
  for (const door of doors) {
    const item = document.createElement("li");
    const name = document.createElement("span");
    name.textContent = door.display_name;
    const button = document.createElement("button");
    button.textContent = "Look outside";
    button.dataset.door = door.user_id;
    button.addEventListener("click", () => lookOutside(door));
    item.append(name, button);
    list.append(item);
  }
}

function when(isoTime) {
  return new Date(isoTime).toLocaleString([], { dateStyle: "medium", timeStyle: "short" });
}

function duration(seconds) {
  const s = Math.round(seconds);
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
}

function describe(record) {
  const caller = names.get(record.caller.user_id) || record.caller.user_id;
  const title = record.caller.user_id === session.user_id
    ? `You looked outside: ${record.callees.map((id) => names.get(id) || id).join(", ")}`
    : `${caller} rang`;
  let outcome = REASONS[record.end_reason] || "Ringing now";
  if (record.accepted_by) {
    const who = record.accepted_by.user_id === session.user_id ? "you" : names.get(record.accepted_by.user_id) || record.accepted_by.user_id;
    outcome = `Answered by ${who}` + (record.duration_s !== null ? ` · ${duration(record.duration_s)}` : "");
  }
  return { title, outcome };
}

function historyItem(title, detail, reason, picturePath) {
  const item = document.createElement("li");
  const picture = document.createElement(picturePath ? "img" : "div");
  picture.className = picturePath ? "" : "noimg";
  if (picturePath) {
    picture.alt = "Visitor";
    blobUrl(picturePath).then((url) => { picture.src = url; }).catch(() => {});
  }
  const text = document.createElement("div");
  const head = document.createElement("div");
  head.className = "title";
  head.textContent = title;
  const line = document.createElement("div");
  line.className = "detail";
  const reasonSpan = document.createElement("span");
  reasonSpan.className = "reason";
  reasonSpan.dataset.reason = reason || "";
  reasonSpan.textContent = detail.outcome;
  line.append(reasonSpan, ` · ${detail.when}`);
  text.append(head, line);
  item.append(picture, text);
  return item;
}

async function loadHistory(reset) {
  if (!session || !me) return;
  const list = historyTab === "calls" ? $("history") : $("openings");
  if (reset) historyNext = null;
  try {
    let rows;
    if (historyTab === "calls") {
      const path = `/v1/direct_calls?limit=20${historyNext ? `&next=${encodeURIComponent(historyNext)}` : ""}`;
      const page = await (await api(path)).json();
      rows = page.calls.map((record) => {
        const { title, outcome } = describe(record);
        return historyItem(title, { outcome, when: when(record.created_at) }, record.end_reason,
                           record.has_snapshot ? `/v1/direct_calls/${encodeURIComponent(record.call_id)}/snapshot` : null);
      });
      historyNext = page.next;
    } else {
      const path = `/v1/sites/${encodeURIComponent(me.site.site_id)}/audit?limit=20`
                   + (historyNext ? `&next=${encodeURIComponent(historyNext)}` : "");
      const page = await (await api(path)).json();
      rows = page.events.map((event) => {
        const who = names.get(event.by.user_id) || event.by.user_id;
        const door = names.get(event.door_id) || event.door_id || "the door";
        const outcome = event.outcome === "opened" ? `Opened by ${who}` : `${event.outcome} for ${who}: ${event.detail || ""}`;
        return historyItem(door, { outcome, when: when(event.at) }, event.outcome, null);
      });
      historyNext = page.next;
    }
    if (reset) {
      releasePictures(list);
      list.replaceChildren(...rows);
    }
    else list.append(...rows);
    $("history-empty").hidden = list.children.length > 0;
    $("history-more").hidden = !historyNext;
  } catch (error) {
    if (session) toast(`Could not load the history: ${error.message}`);
  }
}

let refreshTimer = null;
function refreshHistory() {
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(() => loadHistory(true), 300);
}

function selectTab(tab) {
  historyTab = tab;
  $("tab-calls").setAttribute("aria-selected", String(tab === "calls"));
  $("tab-openings").setAttribute("aria-selected", String(tab === "openings"));
  $("history").hidden = tab !== "calls";
  $("openings").hidden = tab !== "openings";
  loadHistory(true);
}

// -- ringing while the app is closed (Web Push) ---------------------------------------------

// Why this browser cannot ring with the app closed, or null when it can.
function pushUnavailable() {
  const apple = /iPhone|iPad|iPod/.test(navigator.userAgent)
    || (navigator.platform === "MacIntel" && navigator.maxTouchPoints > 1);
  const installed = navigator.standalone === true || matchMedia("(display-mode: standalone)").matches;
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

async function pushSubscription() {
  if (!("serviceWorker" in navigator) || !("PushManager" in window)) return null;
  const reg = await navigator.serviceWorker.ready;
  return reg.pushManager.getSubscription();
}

function showPush(on, text) {
  $("push-switch").checked = on;
  $("push-switch").setAttribute("aria-checked", String(on));
  $("push-state").textContent = text;
  $("push-test").hidden = !on;
}

function devicePath() {
  return `/v1/me/devices/${encodeURIComponent(session.device_id)}/push`;
}

async function renderPush() {
  const why = pushUnavailable();
  $("push-switch").disabled = Boolean(why);
  if (why) {
    showPush(false, why);
    return;
  }
  try {
    const [sub, listed] = await Promise.all([pushSubscription(), api("/v1/me/push").then((r) => r.json())]);
    const mine = listed.subscriptions.find((s) => s.device_id === session.device_id);
    if (sub && mine) showPush(true, `On: this phone rings when the app is closed (through ${new URL(mine.push_service).host}).`);
    else showPush(false, "Off: this phone rings only while the app is open.");
  } catch {
    showPush(false, "Could not check with the server whether this phone rings when the app is closed.");
  }
}

async function switchPush() {
  const wanted = $("push-switch").checked;
  $("push-switch").disabled = true;
  try {
    if (wanted) await pushOn();
    else await pushOff();
  } catch (error) {
    showPush(false, `Could not switch it on: ${error.message}`);
    $("push-switch").disabled = false;
    return;
  }
  $("push-switch").disabled = false;
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
    const late = new Promise((_, reject) => setTimeout(
      () => reject(new Error("it did not answer; check this phone's internet connection")), PUSH_SUBSCRIBE_MS));
    sub = sub || await Promise.race([reg.pushManager.subscribe({ userVisibleOnly: true, applicationServerKey: key }), late]);
  } catch (error) {
    throw new Error(`the browser's push service refused (${error.message})`);
  }
  const response = await fetch(devicePath(), {
    method: "PUT", body: JSON.stringify(sub.toJSON()),
    headers: { Authorization: `Bearer ${session.access_token}`, "Content-Type": "application/json" },
  });
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    throw new Error(body.error ? body.error.message : `the server answered ${response.status}`);
  }
}

function sameKey(buffer, base64url) {
  if (!buffer) return false;
  const bytes = new Uint8Array(buffer);
  const text = btoa(String.fromCharCode(...bytes)).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  return text === base64url;
}

async function pushOff() {
  const sub = await pushSubscription();
  if (sub) await sub.unsubscribe();
  await fetch(devicePath(), { method: "DELETE", headers: { Authorization: `Bearer ${session.access_token}` } });
}

async function testPush() {
  const response = await fetch(`${devicePath()}/test`, {
    method: "POST", headers: { Authorization: `Bearer ${session.access_token}` },
  });
  toast(response.ok ? "Test notification sent. Lock the phone: it should show in a few seconds."
                    : "The test could not be sent; switch ringing off and on again.");
}

// -- start ----------------------------------------------------------------------------------

async function start() {
  $("signin-screen").hidden = true;
  try {
    me = await (await api("/v1/me")).json();
  } catch (error) {
    if (!session) return; // signed out by api()
    // The server is unreachable: show what we know and keep trying.
    me = me || { user: { user_id: session.user_id, display_name: session.display_name || session.user_id },
                 site: { site_id: "", name: "Intercom" }, users: [] };
    banner("Cannot reach the server. Trying again…");
    setTimeout(start, 3000);
    return;
  }
  self.sessionStore.put(session).catch(() => {}); // a session from before the worker needed it
  names.clear();
  for (const user of me.users) names.set(user.user_id, user.display_name);
  $("site-name").textContent = me.site.name;
  $("who").textContent = `Signed in as ${me.user.display_name}`;
  $("home-screen").hidden = false;
  renderDoors();
  loadHistory(true);
  renderPush();
  if (!ws) connect();
}

function wire() {
  $("signin-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const code = inviteCode($("invite-input").value);
    if (code) signInWith(code);
    else showSignIn("That is not an invite link. It looks like https://…/#invite=…");
  });
  $("answer").addEventListener("click", answer);
  $("decline").addEventListener("click", decline);
  $("hangup").addEventListener("click", hangUp);
  $("open-door").addEventListener("click", openDoor);
  $("mute").addEventListener("click", toggleMute);
  $("unmute-visitor").addEventListener("click", () => {
    const video = $("remote-video");
    video.muted = false;
    video.play().catch(() => {});
    $("unmute-visitor").hidden = true;
  });
  $("signout").addEventListener("click", () => signOut());
  $("history-more").addEventListener("click", () => loadHistory(false));
  $("tab-calls").addEventListener("click", () => selectTab("calls"));
  $("tab-openings").addEventListener("click", () => selectTab("openings"));
  $("push-switch").addEventListener("change", switchPush);
  $("push-test").addEventListener("click", testPush);
  if (navigator.serviceWorker) {
    navigator.serviceWorker.addEventListener("message", (event) => {
      if (event.data && event.data.type === "answer") answerFromNotification(event.data.call_id);
    });
  }
  for (const kind of ["pointerdown", "keydown"]) document.addEventListener(kind, () => ringtone.unlock(), { capture: true });
  window.addEventListener("online", () => { if (session && !ws) connect(); });
}

function inviteFromAddress() {
  const code = inviteCode(location.hash);
  if (code) history.replaceState(null, "", location.pathname); // the code is spent: keep it out of history
  return code;
}

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
answerOnRing = answerFromAddress();
const firstCode = inviteFromAddress();
if (firstCode) signInWith(firstCode);
else if (session) start();
else showSignIn(null);
