// The phone's session ({user_id, access_token, device_id}) in IndexedDB, where the service
// worker can read it: a worker has no localStorage. The worker needs it to fetch the visitor's
// picture and to decline from a notification with the phone's own token, so a push message
// never has to carry a credential.
//
// A plain script, not a module: the page imports it as a module and the worker with
// importScripts; both find `self.sessionStore`.

self.sessionStore = (() => {
  /** @returns {Promise<IDBDatabase>} */
  const open = () => new Promise((resolve, reject) => {
    const request = indexedDB.open("intercom", 1);
    request.onupgradeneeded = () => request.result.createObjectStore("kv");
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error);
  });
  /** @param {IDBTransactionMode} mode @param {(kv: IDBObjectStore) => IDBRequest} work @returns {Promise<any>} */
  const run = async (mode, work) => {
    const db = await open();
    try {
      return await new Promise((resolve, reject) => {
        const tx = db.transaction("kv", mode);
        const request = work(tx.objectStore("kv"));
        tx.oncomplete = () => resolve(request.result);
        tx.onerror = () => reject(tx.error);
      });
    } finally {
      db.close();
    }
  };
  return {
    get: () => run("readonly", (kv) => kv.get("session")).then((value) => value || null),
    put: (/** @type {object} */ session) => run("readwrite", (kv) => kv.put(session, "session")),
    clear: () => run("readwrite", (kv) => kv.delete("session")),
  };
})();
