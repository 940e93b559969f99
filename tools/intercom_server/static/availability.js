// "Do not disturb": when this resident is rung at all (docs/protocol.md, "Do not disturb").
// The server decides at each press from its own clock; the page only shows and changes the
// rules. A press that rings nobody still shows in the history.

import { input, $, toast } from "./screens.js";
import { api } from "./session.js";

/** @typedef {{days: string[], start: string, end: string}} QuietWindow */
/** @typedef {{do_not_disturb: {on: boolean, until: string | null}, quiet_hours: QuietWindow[],
 *   site: {away: boolean, time_zone: string}, available: boolean, reason: string | null}} Availability */
/** @typedef {import("./state.js").Me} Me */

const EVERY_DAY = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/** @type {string} */
let siteId = "";

/** @param {string} iso */
function clock(iso) {
  return new Date(iso).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

/** @param {Availability} rules */
function describe(rules) {
  if (rules.site.away) return "Away: nobody here is rung. Presses show in the history.";
  if (rules.reason === "do_not_disturb") {
    const until = rules.do_not_disturb.until;
    return until ? `On until ${clock(until)}: presses show in the history, nothing rings.`
      : "On until you switch it off: presses show in the history, nothing rings.";
  }
  if (rules.reason === "quiet_hours") return "Quiet hours now: presses show in the history, nothing rings.";
  return "Off: a press rings this phone.";
}

/** @param {Availability} rules */
function show(rules) {
  const dnd = input("dnd-switch");
  dnd.checked = rules.do_not_disturb.on && rules.reason === "do_not_disturb";
  dnd.setAttribute("aria-checked", String(dnd.checked));
  const first = rules.quiet_hours[0];
  const quiet = input("quiet-switch");
  quiet.checked = Boolean(first);
  quiet.setAttribute("aria-checked", String(quiet.checked));
  if (first) {
    input("quiet-start").value = first.start;
    input("quiet-end").value = first.end;
  }
  const away = input("away-switch");
  away.checked = rules.site.away;
  away.setAttribute("aria-checked", String(away.checked));
  $("dnd-state").textContent = describe(rules);
  $("dnd-state").dataset.available = String(rules.available);
}

/** @param {Me} me */
export async function renderAvailability(me) {
  siteId = me.site.site_id;
  try {
    show(await (await api("/v1/me/availability")).json());
  } catch {
    $("dnd-state").textContent = "Could not read the do-not-disturb settings from the server.";
  }
}

/** Send a change; the page shows the server's answer, or says it failed.
 * @param {string} path @param {object} body */
async function change(path, body) {
  for (const id of ["dnd-switch", "quiet-switch", "away-switch"]) input(id).disabled = true;
  try {
    await api(path, { method: "PUT", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
  } catch (error) {
    toast(`Could not change it: ${/** @type {Error} */ (error).message}`);
  } finally {
    for (const id of ["dnd-switch", "quiet-switch", "away-switch"]) input(id).disabled = false;
  }
  try {
    show(await (await api("/v1/me/availability")).json());
  } catch { /* the last state shown stays */ }
}

export function switchDnd() {
  const length = Number(/** @type {HTMLSelectElement} */ ($("dnd-length")).value);
  const on = input("dnd-switch").checked;
  return change("/v1/me/availability", { do_not_disturb: on && length > 0 ? { on, for_s: length } : { on } });
}

export function changeQuietHours() {
  const on = input("quiet-switch").checked;
  const start = input("quiet-start").value || "22:00";
  const end = input("quiet-end").value || "07:00";
  return change("/v1/me/availability", { quiet_hours: on ? [{ days: EVERY_DAY, start, end }] : [] });
}

export function switchAway() {
  return change(`/v1/sites/${encodeURIComponent(siteId)}/availability`, { away: input("away-switch").checked });
}
