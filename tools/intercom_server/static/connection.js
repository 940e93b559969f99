// The WebSocket to the server (protocol v1, docs/protocol.md): sign-in with the calls this
// page holds, requests matched to their replies, server events, and reconnection with backoff.

import { CLOSE, ERROR_CODES, PROTOCOL_PATH } from "./protocol.js";
import { banner, $ } from "./screens.js";
import { app, hooks } from "./state.js";
import { REVOKED, session } from "./session.js";

/** @typedef {Error & {code?: string}} ProtocolFailure an `error` reply, or "offline" */
/** @typedef {{type: string, [field: string]: any}} Message */

/**
 * What the rest of the app does with the connection.
 * @typedef {object} Handlers
 * @property {() => string[]} held the calls this page still holds, claimed at each sign-in
 * @property {(live: string[]) => void} signedIn the calls the server still knows for this device
 * @property {(event: Message) => void} event a server event
 */

/** @param {string} message @param {string} code @returns {ProtocolFailure} */
function failure(message, code) {
  return Object.assign(new Error(message), { code });
}

/** Requests and their replies, matched by id: the rule every party of protocol v1 follows
 * (the Python programs' RequestTracker). */
class Requests {
  constructor() {
    this.next = 1;
    /** @type {Map<string, {resolve: (reply: Message) => void, reject: (error: ProtocolFailure) => void}>} */
    this.waiting = new Map();
  }

  /** @param {string} type @param {object} body @returns {[Message, Promise<Message>]} */
  start(type, body) {
    const id = String(this.next++);
    const reply = new Promise((resolve, reject) => this.waiting.set(id, { resolve, reject }));
    return [{ type, id, ...body }, reply];
  }

  /** Whether the reply answered a request of ours. @param {Message} reply */
  settle(reply) {
    const waiting = this.waiting.get(String(reply.re));
    if (!waiting) return false;
    this.waiting.delete(String(reply.re));
    if (reply.type === "ok") waiting.resolve(reply);
    else waiting.reject(failure(reply.message, reply.code));
    return true;
  }

  close() {
    for (const { reject } of this.waiting.values()) reject(failure("the connection closed", "offline"));
    this.waiting.clear();
  }
}

/** @type {WebSocket | null} */
let ws = null;
let online = false;
/** @type {RTCIceServer[]} */
let iceServers = [];
const requests = new Requests();
let reconnectDelay = 1000;
/** @type {ReturnType<typeof setTimeout> | undefined} */
let reconnectTimer;
/** @type {Handlers | null} */
let handlers = null;

export const isOnline = () => online;
export const isConnecting = () => ws !== null;
export const ice = () => iceServers;

/** @param {Handlers} using */
export function connect(using) {
  handlers = using;
  clearTimeout(reconnectTimer);
  const socket = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}${PROTOCOL_PATH}`);
  ws = socket;
  socket.onopen = async () => {
    try {
      // Claim the calls this page still holds: the server ends the ones it does not hear of,
      // and tells which of ours it still knows (the others ended while we were away).
      const me = session();
      const ok = await request("authenticate", { user_id: me.user_id, access_token: me.access_token,
                                                 device_id: me.device_id, calls: using.held() });
      iceServers = ok.ice_servers || [];
      using.signedIn((ok.calls || []).map((/** @type {{call_id: string}} */ c) => c.call_id));
      reconnectDelay = 1000;
      setOnline(true);
    } catch (error) {
      if (/** @type {ProtocolFailure} */ (error).code === ERROR_CODES.UNAUTHENTICATED) hooks.signOut(REVOKED);
      else socket.close();
    }
  };
  socket.onmessage = (event) => {
    let message;
    try {
      message = JSON.parse(event.data);
    } catch {
      return;
    }
    onMessage(socket, message);
  };
  socket.onclose = (event) => {
    if (ws !== socket) return;
    ws = null;
    setOnline(false);
    requests.close();
    if (!app.session) return;
    if (event.code === CLOSE.TOKEN_REVOKED) {
      hooks.signOut(REVOKED);
      return;
    }
    if (event.code === CLOSE.SERVICE_RESTART) {
      // The server process is restarting (a cluster's rolling restart): another one takes this
      // phone at once, and its call goes on there. No banner: nothing is wrong.
      reconnectTimer = setTimeout(() => connect(using), 100 + Math.random() * 400);
      return;
    }
    if (event.code === CLOSE.REPLACED) {
      banner("Intercom is open in another tab or window; this one has stopped. Reload to use it here.");
      return;
    }
    const seconds = Math.round(reconnectDelay / 1000);
    banner(`Cannot reach the server. Trying again in ${seconds} s…`);
    reconnectTimer = setTimeout(() => connect(using), reconnectDelay * (0.8 + Math.random() * 0.4));
    reconnectDelay = Math.min(reconnectDelay * 2, 15000);
  };
}

/** Reconnect now if the page is signed in and not connected (the network came back). */
export function reconnect() {
  if (handlers && !ws) connect(handlers);
}

export function disconnect() {
  clearTimeout(reconnectTimer);
  const socket = ws;
  ws = null;
  if (socket) socket.close(1000);
  requests.close();
  setOnline(false);
}

/** Send a request; resolves with its `ok`, rejects with its `error` (or code "offline").
 * @param {string} type @param {object} [body] @returns {Promise<Message>} */
export function request(type, body = {}) {
  if (!ws || ws.readyState !== WebSocket.OPEN) return Promise.reject(failure("not connected to the server", "offline"));
  const [message, reply] = requests.start(type, body);
  ws.send(JSON.stringify(message));
  return reply;
}

/** @param {WebSocket} socket @param {Message} message */
function onMessage(socket, message) {
  if (message.type === "ok" || message.type === "error") {
    requests.settle(message);
    return;
  }
  if (message.id !== undefined) {
    // A request from the server that a phone does not handle (the door's `action`).
    socket.send(JSON.stringify({ type: "error", re: message.id, code: ERROR_CODES.BAD_REQUEST,
                                 message: "not handled by the web app" }));
    return;
  }
  if (handlers) handlers.event(message);
}

/** @param {boolean} value */
function setOnline(value) {
  online = value;
  const badge = $("connection");
  badge.dataset.state = value ? "online" : "offline";
  badge.textContent = value ? "online" : "offline";
  if (value) banner(null);
}
