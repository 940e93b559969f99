// The home screen: the site's doors (to look outside) and the history of calls and openings.

import { REASONS } from "./calls.js";
import { button, $, releasePictures, toast } from "./screens.js";
import { api, blobUrl, session } from "./session.js";
import { app } from "./state.js";

/** @typedef {import("./state.js").User} User */
/**
 * @typedef {object} CallRecord
 * @property {string} call_id
 * @property {{user_id: string}} caller
 * @property {string[]} callees
 * @property {string} created_at
 * @property {string | null} end_reason
 * @property {{user_id: string} | null} accepted_by
 * @property {number | null} duration_s
 * @property {boolean} has_snapshot
 * @property {boolean} [has_message]
 */

/** @type {string | null} */
let historyNext = null;
/** @type {"calls" | "openings"} */
let historyTab = "calls";

/** @param {(door: User) => void} lookOutside */
export function renderDoors(lookOutside) {
  const list = $("doors");
  list.replaceChildren();
  const doors = (app.me ? app.me.users : []).filter((user) => user.kind === "door");
  $("no-doors").hidden = doors.length > 0;
  for (const door of doors) {
    const item = document.createElement("li");
    const name = document.createElement("span");
    name.textContent = door.display_name;
    const look = document.createElement("button");
    look.textContent = "Look outside";
    look.dataset.door = door.user_id;
    look.addEventListener("click", () => lookOutside(door));
    item.append(name, look);
    list.append(item);
  }
}

/** @param {string} isoTime */
function when(isoTime) {
  return new Date(isoTime).toLocaleString([], { dateStyle: "medium", timeStyle: "short" });
}

/** @param {number} seconds */
function duration(seconds) {
  const s = Math.round(seconds);
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
}

/** @param {string} userId */
const nameOf = (userId) => app.names.get(userId) || userId;

/** @param {CallRecord} record */
function describe(record) {
  const me = session().user_id;
  const title = record.caller.user_id === me
    ? `You looked outside: ${record.callees.map(nameOf).join(", ")}`
    : `${nameOf(record.caller.user_id)} rang`;
  let outcome = (record.end_reason && REASONS[record.end_reason]) || "Ringing now";
  if (record.accepted_by) {
    const who = record.accepted_by.user_id === me ? "you" : nameOf(record.accepted_by.user_id);
    outcome = `Answered by ${who}` + (record.duration_s !== null ? ` · ${duration(record.duration_s)}` : "");
  }
  return { title, outcome };
}

/**
 * @param {string} title
 * @param {{outcome: string, when: string}} detail
 * @param {string | null} reason
 * @param {string | null} picturePath
 */
function historyItem(title, detail, reason, picturePath) {
  const item = document.createElement("li");
  const picture = document.createElement(picturePath ? "img" : "div");
  picture.className = picturePath ? "" : "noimg";
  if (picturePath && picture instanceof HTMLImageElement) {
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

/** "Play the message" and "Delete" for a call whose visitor left one; the video plays inline.
 * @param {string} callId */
function messageControls(callId) {
  const path = `/v1/direct_calls/${encodeURIComponent(callId)}/message`;
  const box = document.createElement("div");
  box.className = "message";
  const play = document.createElement("button");
  play.className = "secondary play-message";
  play.textContent = "\u25B6 Play the visitor's message";
  const remove = document.createElement("button");
  remove.className = "link delete-message";
  remove.textContent = "Delete";
  play.addEventListener("click", async () => {
    play.disabled = true;
    try {
      const player = document.createElement("video");
      player.controls = true;
      player.playsInline = true;
      player.className = "message-video";
      player.src = await blobUrl(path);
      box.replaceChildren(player, remove);
      await player.play().catch(() => {}); // without a gesture's allowance it waits for a tap
    } catch (error) {
      play.disabled = false;
      toast(`Could not load the message: ${/** @type {Error} */ (error).message}`);
    }
  });
  remove.addEventListener("click", async () => {
    try {
      await api(path, { method: "DELETE" });
      for (const player of box.querySelectorAll("video")) {
        if (player.src.startsWith("blob:")) URL.revokeObjectURL(player.src);
      }
      box.replaceChildren(Object.assign(document.createElement("span"), { className: "muted", textContent: "Message deleted" }));
    } catch (error) {
      toast(`Could not delete it: ${/** @type {Error} */ (error).message}`);
    }
  });
  box.append(play, remove);
  return box;
}

/** @param {boolean} reset the first page again, or the next one */
export async function loadHistory(reset) {
  if (!app.session || !app.me) return;
  const site = app.me.site;
  const list = historyTab === "calls" ? $("history") : $("openings");
  if (reset) historyNext = null;
  const after = historyNext ? `&next=${encodeURIComponent(historyNext)}` : "";
  try {
    let rows;
    if (historyTab === "calls") {
      const page = await (await api(`/v1/direct_calls?limit=20${after}`)).json();
      rows = page.calls.map((/** @type {CallRecord} */ record) => {
        const { title, outcome } = describe(record);
        const item = historyItem(title, { outcome, when: when(record.created_at) }, record.end_reason,
                                 record.has_snapshot ? `/v1/direct_calls/${encodeURIComponent(record.call_id)}/snapshot` : null);
        if (record.has_message) item.append(messageControls(record.call_id));
        return item;
      });
      historyNext = page.next;
    } else {
      const page = await (await api(`/v1/sites/${encodeURIComponent(site.site_id)}/audit?limit=20${after}`)).json();
      rows = page.events.map((/** @type {{by: {user_id: string}, door_id?: string, outcome: string, detail?: string, at: string}} */ event) => {
        const who = nameOf(event.by.user_id);
        const door = (event.door_id && nameOf(event.door_id)) || "the door";
        const outcome = event.outcome === "opened" ? `Opened by ${who}` : `${event.outcome} for ${who}: ${event.detail || ""}`;
        return historyItem(door, { outcome, when: when(event.at) }, event.outcome, null);
      });
      historyNext = page.next;
    }
    if (reset) {
      releasePictures(list);
      list.replaceChildren(...rows);
    } else {
      list.append(...rows);
    }
    $("history-empty").hidden = list.children.length > 0;
    button("history-more").hidden = !historyNext;
  } catch (error) {
    if (app.session) toast(`Could not load the history: ${/** @type {Error} */ (error).message}`);
  }
}

/** @type {ReturnType<typeof setTimeout> | undefined} */
let refreshTimer;
/** A call ended or a press was missed: the history shows it (once for a burst of events). */
export function refreshHistory() {
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(() => loadHistory(true), 300);
}

/** @param {"calls" | "openings"} tab */
export function selectTab(tab) {
  historyTab = tab;
  $("tab-calls").setAttribute("aria-selected", String(tab === "calls"));
  $("tab-openings").setAttribute("aria-selected", String(tab === "openings"));
  $("history").hidden = tab !== "calls";
  $("openings").hidden = tab !== "openings";
  loadHistory(true);
}
