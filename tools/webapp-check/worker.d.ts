// keystore.js, loaded with importScripts, adds the session store to the worker's global scope.
interface WorkerSession { user_id: string; access_token: string; device_id: string; display_name?: string }
interface SessionStore {
  get(): Promise<WorkerSession | null>;
  put(session: WorkerSession): Promise<void>;
  clear(): Promise<void>;
}
interface WorkerGlobalScope {
  sessionStore: SessionStore;
}
