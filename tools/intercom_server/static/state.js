// What the app's modules share: who is signed in, the site, and two hooks the start module
// fills in (so that the modules below it never import it back).

/**
 * @typedef {{user_id: string, access_token: string, device_id: string, display_name?: string}} Session
 * @typedef {{user_id: string, display_name: string, kind: string}} User
 * @typedef {{user: User, site: {site_id: string, name: string}, users: User[]}} Me
 */

export const app = {
  /** @type {Session | null} */
  session: null,
  /** @type {Me | null} */
  me: null,
  /** @type {Map<string, string>} user_id -> display name */
  names: new Map(),
};

export const hooks = {
  /** Sign out, with the reason shown to the resident (none: the resident chose to). */
  signOut: /** @type {(message?: string) => Promise<void>} */ (async () => {}),
  /** Something happened that the history shows: reload it (soon). */
  historyChanged: () => {},
};
