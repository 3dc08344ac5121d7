// The live part: the API's server-sent event stream, and which models each kind of event makes stale.
//
// On start the page reads the recent events (`GET events`), then follows `events/stream` from the last sequence
// number it saw. The browser's EventSource reconnects by itself after a dropped connection (sending Last-Event-ID);
// when the server refuses the stream outright, EventSource gives up, and this module tries again later with
// `?since=` so no event is missed. A reconnect also refreshes every model: events may have been dropped meanwhile.

import { isNum } from "./format.js";
import { LIVE_MODELS } from "./store.js";

const RETRY_FIRST_MS = 1000;
const RETRY_MAX_MS = 30000;
const INITIAL_EVENTS = 500;

const HOST_MODELS = ["cluster", "hosts", "gpus"];
const REPLICA_MODELS = ["cluster", "hosts", "kernels"];
const EXECUTION_KINDS = new Set(["execution_started", "execution_interrupted", "released", "decision"]);

/**
 * The models an event of this kind may have changed; unknown kinds refresh everything.
 * @param {string} kind
 * @returns {string[]}
 */
export function modelsAffectedBy(kind) {
  if (typeof kind !== "string") return LIVE_MODELS;
  if (kind.startsWith("host_") || kind === "scale_out_requested") return HOST_MODELS;
  if (kind.startsWith("replica_") || kind.startsWith("kernel_") || kind === "placement_deferred") {
    return REPLICA_MODELS;
  }
  return LIVE_MODELS; // executions and decisions touch GPUs, kernels, hosts' idle counts and the totals
}

/** Whether an event kind counts as an execution event (shown with its own colour in the log). */
export function isExecutionKind(kind) {
  return EXECUTION_KINDS.has(kind);
}

export class LiveEvents {
  /**
   * @param {import("./api.js").Api} api
   * @param {{onEvents: (events: object[]) => void, onStatus: (state: string, detail: string) => void,
   *          onReconnect: () => void}} handlers
   */
  constructor(api, handlers) {
    this.api = api;
    this.handlers = handlers;
    this.lastSeq = null;
    this.source = null;
    this.opened = false;
    this.retryMs = RETRY_FIRST_MS;
  }

  /** Read the recent events, then follow the stream. */
  async start() {
    try {
      const data = await this.api.get("events", { limit: INITIAL_EVENTS });
      this.accept(data && Array.isArray(data.events) ? data.events : []);
      if (data && isNum(data.last_seq)) this.lastSeq = Math.max(this.lastSeq ?? data.last_seq, data.last_seq);
    } catch (err) {
      this.handlers.onStatus("offline", `recent events unavailable: ${err.message}`);
    }
    this.connect();
  }

  connect() {
    this.handlers.onStatus("connecting", "connecting to the event stream");
    const source = new EventSource(this.api.url("events/stream", { since: this.lastSeq }));
    this.source = source;
    source.onopen = () => {
      this.retryMs = RETRY_FIRST_MS;
      this.handlers.onStatus("live", "live: following the event stream");
      if (this.opened) this.handlers.onReconnect();
      this.opened = true;
    };
    source.onmessage = (message) => {
      let event;
      try {
        event = JSON.parse(message.data);
      } catch {
        return; // not an event (the stream's keepalives are comments and never get here)
      }
      this.accept([event]);
    };
    // The API names this event when it cannot reach the cluster; the browser reconnects after the stream's `retry`.
    source.addEventListener("cluster_unavailable", (message) => {
      let said = "the notebookos cluster is unavailable";
      try {
        said = JSON.parse(message.data).message || said;
      } catch {
        // keep the generic words
      }
      this.handlers.onStatus("offline", said);
    });
    source.onerror = () => {
      if (source.readyState !== EventSource.CLOSED) {
        this.handlers.onStatus("connecting", "event stream interrupted; reconnecting");
        return;
      }
      // Refused (an HTTP error, a wrong content type): the browser will not retry, so this does, with backoff.
      source.close();
      const seconds = Math.round(this.retryMs / 1000);
      this.handlers.onStatus("offline", `event stream unavailable; polling, retrying the stream in ${seconds} s`);
      window.setTimeout(() => this.connect(), this.retryMs);
      this.retryMs = Math.min(this.retryMs * 2, RETRY_MAX_MS);
      this.opened = true; // the next successful open is a reconnect: refresh what may have been missed
    };
  }

  /** Pass on events not seen yet (by sequence number), oldest first. */
  accept(events) {
    const fresh = [];
    for (const event of events) {
      if (!event || typeof event !== "object") continue;
      if (isNum(event.seq)) {
        if (this.lastSeq !== null && event.seq <= this.lastSeq) continue;
        this.lastSeq = event.seq;
      }
      fresh.push(event);
    }
    if (fresh.length) this.handlers.onEvents(fresh);
  }
}
