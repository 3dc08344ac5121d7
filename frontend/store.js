// The page's copy of the API's models, refreshed on demand and shared by every view.
//
// Views never fetch; they subscribe here and render whatever the store holds. The live event stream and the
// safety poll only say *which* models to fetch again (`schedule`), so a burst of events costs one request per
// model. A response that arrives after a newer request for the same model was issued is dropped, so a slow old
// answer never overwrites a fresh one.

/** @typedef {"me"|"cluster"|"hosts"|"gpus"|"kernels"|"history"} ModelName */

/** How each model is fetched and unwrapped; list endpoints answer `{name: [...]}`. */
const LOADERS = {
  me: (api) => api.get("me"),
  cluster: (api) => api.get("cluster"),
  hosts: (api) => api.get("hosts").then((d) => listOf(d, "hosts")),
  gpus: (api) => api.get("gpus").then((d) => listOf(d, "gpus")),
  kernels: (api) => api.get("kernels").then((d) => listOf(d, "kernels")),
  history: (api) => api.get("history", { seconds: 3600 }),
};

/** The models the cluster and kernels views draw from (`me` and `history` are fetched on their own schedules). */
export const LIVE_MODELS = ["cluster", "hosts", "gpus", "kernels"];

function listOf(data, key) {
  return data && Array.isArray(data[key]) ? data[key] : [];
}

export class Store {
  /** @param {import("./api.js").Api} api */
  constructor(api) {
    this.api = api;
    /** @type {Partial<Record<ModelName, any>>} */
    this.data = {};
    /** @type {Partial<Record<ModelName, import("./api.js").ApiError|Error>>} the last failure, until a success */
    this.errors = {};
    this.listeners = new Set();
    this.issued = {};
    this.pending = new Set();
    this.timer = null;
  }

  /** Call `fn(changedNames, store)` after every refresh. */
  subscribe(fn) {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  /**
   * Fetch models now; resolves once all answered (failures are recorded in `errors`, never thrown).
   * @param {ModelName[]} names
   */
  async refresh(names) {
    const unique = [...new Set(names)];
    const changed = [];
    await Promise.all(unique.map(async (name) => {
      const ticket = (this.issued[name] = (this.issued[name] || 0) + 1);
      try {
        const value = await LOADERS[name](this.api);
        if (ticket !== this.issued[name]) return;
        this.data[name] = value;
        delete this.errors[name];
      } catch (err) {
        if (ticket !== this.issued[name]) return;
        this.errors[name] = err;
      }
      changed.push(name);
    }));
    if (changed.length) {
      for (const fn of this.listeners) fn(changed, this);
    }
  }

  /**
   * Fetch models soon, coalescing requests made within `delayMs` (one burst of events, one fetch per model).
   * @param {ModelName[]} names
   */
  schedule(names, delayMs = 150) {
    for (const name of names) this.pending.add(name);
    if (this.timer !== null) return;
    this.timer = window.setTimeout(() => {
      this.timer = null;
      const due = [...this.pending];
      this.pending.clear();
      this.refresh(due);
    }, delayMs);
  }
}
