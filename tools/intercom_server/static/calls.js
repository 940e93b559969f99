// Ringing and calls: the resident's side of a call in the browser, by the same rules as the
// Python resident (intercom_protocol.resident): a ring while busy is left to another device,
// the same ring after a reconnection is one ring, a ring stops by its own clock, a call the
// server no longer lists is over.

import { END_REASONS } from "./protocol.js";
import { button, image, video, $, releasePictures, toast } from "./screens.js";
import { blobUrl } from "./session.js";
import { hooks } from "./state.js";
import { ice, request } from "./connection.js";

/** @typedef {import("./connection.js").Message} Message */
/** @typedef {import("./connection.js").ProtocolFailure} ProtocolFailure */
/** @typedef {{call_id: string, caller: {user_id: string, display_name: string, kind: string}, offer: RTCSessionDescriptionInit, pictured?: boolean}} Ring */
/** @typedef {{stream?: MediaStream, track?: MediaStreamTrack, error?: string}} Microphone */
/** @typedef {{call_id: string | null, pc: RTCPeerConnection, role: "caller" | "callee", peerName: string, mic: Microphone, stream: MediaStream, watch?: number}} Call */

/** How long a call's media may bring nothing at all (no RTP, no RTCP) before the call is over:
 * the rule of every party (MEDIA_SILENCE_S in intercom_protocol.calls). A door that lost power
 * or its network sends nothing, and the browser would say "failed" only after ~30 s. */
const MEDIA_SILENCE_MS = 10000;
const MEDIA_CHECK_MS = 2000;

/** What the resident reads for each end reason. @type {Record<string, string>} */
export const REASONS = {
  [END_REASONS.NO_ANSWER]: "Nobody answered",
  [END_REASONS.CANCELED]: "The visitor left before anyone answered",
  [END_REASONS.DECLINED]: "Declined",
  [END_REASONS.OTHER_DEVICE_ACCEPTED]: "Answered on another device",
  [END_REASONS.COMPLETED]: "Call ended",
  [END_REASONS.CONNECTION_LOST]: "The connection was lost",
  [END_REASONS.TIMED_OUT]: "The call reached its time limit",
  [END_REASONS.DIAL_FAILED]: "Rang while the door was offline",
  [END_REASONS.UNKNOWN]: "Interrupted when the server stopped",
  [END_REASONS.UNAVAILABLE]: "Not rung: do not disturb, quiet hours or away",
};

/** @type {Ring | null} */
let ringing = null;
/** @type {Call | null} */
let call = null;
/** A call id the resident already answered from a notification. @type {string | null} */
let answerOnRing = null;
/** The quick reply this phone sent to a ring, and the ring's. @type {{call_id: string, label: string} | null} */
let replied = null;

export const current = () => ({ ringing, call });
/** Whether this call is still the page's call (after an await, the resident may have hung up).
 * @param {Call} active */
const isCurrent = (active) => call === active;

/** The calls this page holds, claimed when it signs in. */
export function held() {
  return /** @type {string[]} */ ([call && call.call_id, ringing && ringing.call_id].filter(Boolean));
}

/** Signed in again: what the server no longer lists ended while this phone was away.
 * @param {string[]} live */
export function resync(live) {
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

/** A server event. @param {Message} message */
export function onEvent(message) {
  /** @type {Record<string, (event: any) => unknown>} */
  const handlers = { incoming: onIncoming, ended: onEnded, accepted: onAccepted, ringing: onRinging,
                     missed: onMissed, snapshot: showVisitor };
  const handler = handlers[message.type];
  if (handler) handler(message);
}

/** @param {Message} event */
async function onIncoming(event) {
  if (call) return; // busy in a call: another device can take it
  if (ringing && ringing.call_id === event.call_id) return; // the same ring, after a reconnection
  closeNotifications(event.call_id);
  const expires = typeof event.expires_in_s === "number" ? event.expires_in_s : 60;
  const mine = ringing = { call_id: event.call_id, caller: event.caller, offer: event.offer };
  // The ring's own clock: it stops by itself if its `ended` never comes.
  setTimeout(() => { if (ringing === mine) stopRinging(); }, expires * 1000);
  $("ring-caller").textContent = `${event.caller.display_name} is ringing`;
  $("ring-title").textContent = event.caller.kind === "door" ? "Someone is at the door" : `${event.caller.display_name} is calling`;
  $("ring-snapshot").hidden = true;
  showReplies(event.quick_replies);
  $("ring-screen").hidden = false;
  button("answer").disabled = false;
  button("decline").disabled = false;
  if (answerOnRing === event.call_id) {
    answerOnRing = null;
    answer(); // Answer was tapped on the notification: no second tap
    return;
  }
  ringtone.start();
  if (event.snapshot_url) await showVisitor(event);
}

/** The ring on screen replaces the notification of the same call, so the phone shows one ring.
 * @param {string} callId */
function closeNotifications(callId) {
  if (document.visibilityState !== "visible" || !navigator.serviceWorker) return;
  navigator.serviceWorker.ready
    .then((reg) => reg.getNotifications({ tag: `call-${callId}` }))
    .then((shown) => shown.forEach((n) => n.close()))
    .catch(() => {});
}

/** The page was opened from a notification's Answer (`/#answer=CALL_ID`): answer that call as
 * soon as it rings here. */
export function answerFromAddress() {
  const match = /(?:^|[#&])answer=([A-Za-z0-9_-]+)/.exec(location.hash);
  if (match) history.replaceState(null, "", location.pathname);
  answerOnRing = match ? match[1] : null;
}

/** Answer tapped on a notification while the app was open in the background.
 * @param {string} callId */
export function answerFromNotification(callId) {
  if (ringing && ringing.call_id === callId) answer();
  else if (!call) answerOnRing = callId;
}

/** The door rings first and sends the visitor's picture a frame later (`snapshot`); a phone
 * that starts ringing after that gets it in `incoming` instead.
 * @param {Message} event */
async function showVisitor(event) {
  if (!ringing || ringing.call_id !== event.call_id || ringing.pictured) return;
  ringing.pictured = true;
  try {
    const url = await blobUrl(event.snapshot_url);
    if (ringing && ringing.call_id === event.call_id) {
      image("ring-snapshot").src = url;
      $("ring-snapshot").hidden = false;
    } else {
      URL.revokeObjectURL(url); // the ring ended while the picture was on its way
    }
  } catch {
    // the ring goes on without a picture
  }
}

/** The door's quick replies as buttons: the visitor hears one without anyone answering.
 * @param {{id: string, label: string}[] | undefined} replies */
function showReplies(replies) {
  const box = $("quick-replies");
  box.replaceChildren();
  for (const reply of replies || []) {
    const choice = document.createElement("button");
    choice.className = "secondary";
    choice.textContent = reply.label;
    choice.dataset.reply = reply.id;
    choice.addEventListener("click", () => quickReply(reply));
    box.append(choice);
  }
  box.hidden = !(replies && replies.length);
}

/** @param {{id: string, label: string}} reply */
async function quickReply(reply) {
  const ring = ringing;
  if (!ring) return;
  const choices = /** @type {NodeListOf<HTMLButtonElement>} */ ($("quick-replies").querySelectorAll("button"));
  choices.forEach((choice) => { choice.disabled = true; });
  try {
    await request("action", { call_id: ring.call_id, name: "quick_reply", reply: reply.id });
    replied = { call_id: ring.call_id, label: reply.label };
    toast(`The door said: \u201c${reply.label}\u201d`);
  } catch (error) {
    toast(`Could not send it: ${/** @type {Error} */ (error).message}`);
  } finally {
    choices.forEach((choice) => { choice.disabled = false; });
  }
}

function stopRinging() {
  ringing = null;
  ringtone.stop();
  $("ring-screen").hidden = true;
  releasePictures($("ring-screen"));
  $("ring-snapshot").removeAttribute("src");
}

export async function decline() {
  const ring = ringing;
  stopRinging();
  if (ring) await request("decline", { call_id: ring.call_id }).catch(() => {});
}

/** @param {Message} event */
function onEnded(event) {
  if (ringing && ringing.call_id === event.call_id) {
    stopRinging();
    if (replied && replied.call_id === event.call_id) toast(`Answered with \u201c${replied.label}\u201d`);
    else toast(event.reason === END_REASONS.CANCELED ? "The visitor left." : REASONS[event.reason] || "The call ended.");
  }
  if (call && call.call_id === event.call_id) {
    closeCall();
    toast(REASONS[event.reason] || "The call ended.");
  }
  hooks.historyChanged();
}

/** @param {Message} event */
function onRinging(event) {
  if (call && call.call_id === event.call_id && event.devices === 0) {
    $("call-state").textContent = "The door is offline";
  }
}

/** @param {Message} event */
function onMissed(event) {
  toast(`Missed: ${event.caller.display_name} rang while it was offline.`);
  hooks.historyChanged();
}

/** A ringtone made by the page itself: nothing to download, and it works offline. */
export const ringtone = {
  /** @type {AudioContext | null} */
  context: null,
  /** @type {ReturnType<typeof setInterval> | null} */
  timer: null,
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

/** @returns {Promise<Microphone>} */
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
    const { name, message } = /** @type {DOMException} */ (error);
    if (name === "NotAllowedError" || name === "SecurityError") {
      return { error: "Microphone access is blocked, so the visitor cannot hear you. You can still watch "
                      + "and open the door. To talk, allow the microphone in this site's settings." };
    }
    return { error: `No microphone could be used (${message}). You can still watch and open the door.` };
  }
}

/** @param {"caller" | "callee"} role @param {string} peerName @param {Microphone} mic @returns {Call} */
function newCall(role, peerName, mic) {
  const pc = new RTCPeerConnection({ iceServers: ice() });
  const stream = new MediaStream();
  const active = call = { call_id: null, pc, role, peerName, mic, stream };
  pc.ontrack = (event) => {
    stream.addTrack(event.track);
    const remote = video("remote-video");
    if (remote.srcObject !== stream) remote.srcObject = stream;
    remote.muted = false;
    remote.play().catch(() => {
      // A page opened from a notification may not play sound before the resident touches it:
      // show the visitor at once, silent, and ask for the tap that lets the sound in.
      remote.muted = true;
      remote.play().catch(() => {});
      $("unmute-visitor").hidden = false;
    });
  };
  pc.onconnectionstatechange = () => {
    /** @type {Record<string, string>} */
    const words = { connecting: "Connecting…", connected: "Live", disconnected: "Reconnecting…", failed: "Connection failed" };
    if (call && call.pc === pc && words[pc.connectionState]) $("call-state").textContent = words[pc.connectionState];
    // The media's own clock (ICE consent): a call whose media is dead ends here too, even
    // when the server cannot be told (it is told if it can).
    if (call && call.pc === pc && (pc.connectionState === "failed" || pc.connectionState === "closed")) {
      toast("The connection to the door was lost.");
      hangUp();
    }
    if (call && call.pc === pc && pc.connectionState === "connected" && call.watch === undefined) watchMedia(call);
  };
  $("call-title").textContent = peerName;
  $("call-state").textContent = "Connecting…";
  $("door-result").hidden = true;
  $("unmute-visitor").hidden = true;
  $("mic-note").hidden = !mic.error;
  $("mic-note").textContent = mic.error || "";
  button("mute").disabled = !mic.track;
  $("mute").setAttribute("aria-pressed", "false");
  $("mute").textContent = "Mute";
  button("open-door").disabled = false;
  $("call-screen").hidden = false;
  return active;
}

/** Ends the call when nothing has arrived on its media for MEDIA_SILENCE_MS, whatever the
 * peer connection says. @param {Call} active */
function watchMedia(active) {
  let received = -1;
  let heardAt = Date.now();
  active.watch = window.setInterval(async () => {
    const report = await active.pc.getStats().catch(() => null);
    if (!report || !isCurrent(active)) return;
    let total = 0;
    report.forEach((stats) => {
      if (stats.type === "transport") total += (stats.bytesReceived || 0);
    });
    if (total > received) {
      received = total;
      heardAt = Date.now();
    } else if (Date.now() - heardAt >= MEDIA_SILENCE_MS) {
      toast("The connection to the door was lost.");
      hangUp();
    }
  }, MEDIA_CHECK_MS);
}

/** No trickle (protocol v1): every candidate goes in the one offer or answer.
 * @param {RTCPeerConnection} pc @returns {Promise<void>} */
function gathered(pc) {
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

export async function answer() {
  const ring = ringing;
  if (!ring) return;
  button("answer").disabled = true;
  stopRinging();
  const mic = await microphone();
  const active = newCall("callee", ring.caller.display_name, mic);
  active.call_id = ring.call_id;
  try {
    await active.pc.setRemoteDescription(ring.offer);
    if (mic.track && mic.stream) active.pc.addTrack(mic.track, mic.stream); // takes the offer's audio transceiver
    for (const transceiver of active.pc.getTransceivers()) {
      if (transceiver.receiver.track.kind === "video") transceiver.direction = "recvonly";
      else if (!mic.track) transceiver.direction = "recvonly";
    }
    await active.pc.setLocalDescription(await active.pc.createAnswer());
    await gathered(active.pc);
    await request("accept", { call_id: ring.call_id,
                              answer: { type: "answer", sdp: active.pc.localDescription?.sdp } });
  } catch (error) {
    const { code, message } = /** @type {ProtocolFailure} */ (error);
    if (isCurrent(active)) closeCall();
    toast(code === "conflict" ? "Someone else answered first." : `Could not answer: ${message}`);
  }
}

/** Call a door: it answers by itself and shows the street.
 * @param {{user_id: string, display_name: string}} door */
export async function lookOutside(door) {
  if (call || ringing) return;
  const mic = await microphone();
  const active = newCall("caller", door.display_name, mic);
  const pc = active.pc;
  pc.addTransceiver("video", { direction: "recvonly" });
  if (mic.track && mic.stream) pc.addTransceiver(mic.track, { direction: "sendrecv", streams: [mic.stream] });
  else pc.addTransceiver("audio", { direction: "recvonly" });
  try {
    await pc.setLocalDescription(await pc.createOffer());
    await gathered(pc);
    const ok = await request("dial", { callees: [door.user_id], video: true,
                                       offer: { type: "offer", sdp: pc.localDescription?.sdp } });
    if (isCurrent(active)) active.call_id = ok.call_id;
    else request("end", { call_id: ok.call_id }).catch(() => {}); // hung up while dialling
    $("call-state").textContent = "Calling the door…";
  } catch (error) {
    if (isCurrent(active)) closeCall();
    toast(`Could not reach ${door.display_name}: ${/** @type {Error} */ (error).message}`);
  }
}

/** @param {Message} event */
async function onAccepted(event) {
  if (!call || call.call_id !== event.call_id || call.role !== "caller") return;
  await call.pc.setRemoteDescription(event.answer).catch((error) => toast(`The call failed: ${error.message}`));
}

export async function hangUp() {
  const active = call;
  closeCall();
  if (active && active.call_id) await request("end", { call_id: active.call_id }).catch(() => {});
  hooks.historyChanged();
}

function closeCall() {
  if (!call) return;
  const { pc, mic, stream, watch } = call;
  call = null;
  if (watch !== undefined) window.clearInterval(watch);
  pc.close();
  if (mic.track) mic.track.stop();
  for (const track of stream.getTracks()) track.stop();
  video("remote-video").srcObject = null;
  $("call-screen").hidden = true;
}

export async function openDoor() {
  if (!call || !call.call_id) return;
  const open = button("open-door");
  const result = $("door-result");
  open.disabled = true;
  result.hidden = false;
  result.dataset.outcome = "pending";
  result.textContent = "Opening…";
  try {
    await request("action", { call_id: call.call_id, name: "open_door" });
    result.dataset.outcome = "opened";
    result.textContent = "Door opened";
  } catch (error) {
    result.dataset.outcome = "refused";
    result.textContent = `The door did not open: ${/** @type {Error} */ (error).message}`;
  } finally {
    if (call) open.disabled = false;
  }
}

export function toggleMute() {
  if (!call || !call.mic.track) return;
  const track = call.mic.track;
  track.enabled = !track.enabled;
  $("mute").setAttribute("aria-pressed", String(!track.enabled));
  $("mute").textContent = track.enabled ? "Mute" : "Unmute";
}

export function unmuteVisitor() {
  const remote = video("remote-video");
  remote.muted = false;
  remote.play().catch(() => {});
  $("unmute-visitor").hidden = true;
}
