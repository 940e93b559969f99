// What keystore.js (a classic script, shared with the service worker) adds to the page.
interface SessionStore {
  get(): Promise<import("../intercom_server/static/state.js").Session | null>;
  put(session: import("../intercom_server/static/state.js").Session): Promise<void>;
  clear(): Promise<void>;
}
interface Window {
  sessionStore: SessionStore;
}
