// The events log: what the scheduler and the cluster did, newest first, filtered by host, kernel and kind.
//
// The log keeps the latest events it has seen (the first page from `GET events`, then the stream). Changing a
// filter also asks the API for older matching events (`GET events?host=...`), so a quiet kernel's history is not
// crowded out of the buffer by a busy one.

import { h, render } from "./dom.js";
import { clock, isNum, num, shortId, text } from "./format.js";
import { isExecutionKind } from "./live.js";

const KEEP = 2000;
const SHOW = 300;
const FILTER_FETCH = 300;
// Known kinds, so the filter offers them before any has happened; kinds the server adds later join as they appear.
const KINDS = ["host_added", "host_removed", "host_drain_started", "host_drained", "host_resized",
  "scale_out_requested", "kernel_placed", "placement_deferred", "kernel_closed", "replica_moved", "replica_lost",
  "replica_replaced", "replica_exited", "replica_killed", "replica_restarted", "execution_interrupted",
  "execution_started",
  "released", "decision"];

export class EventLog {
  /**
   * @param {HTMLElement} section the events view
   * @param {import("./api.js").Api} api
   */
  constructor(section, api) {
    this.api = api;
    this.form = section.querySelector('[data-testid="event-filters"]');
    this.body = section.querySelector("tbody");
    this.note = section.querySelector('[data-testid="events-note"]');
    /** @type {Map<string, object>} by sequence number (or a local key for events without one) */
    this.events = new Map();
    this.local = 0;
    this.known = { host: new Set(), kernel: new Set(), kind: new Set(KINDS) };
    this.form.addEventListener("change", () => this.filterChanged());
    this.form.addEventListener("submit", (e) => e.preventDefault());
  }

  filters() {
    const data = new FormData(this.form);
    return { host: String(data.get("host") || ""), kernel: String(data.get("kernel") || ""),
      kind: String(data.get("kind") || "") };
  }

  /** Add events (any order); the oldest beyond the buffer's size are dropped. */
  add(events) {
    for (const event of events) {
      const key = isNum(event.seq) ? `s${event.seq}` : `l${this.local++}`;
      this.events.set(key, event);
      if (event.host) this.known.host.add(event.host);
      if (event.kernel) this.known.kernel.add(event.kernel);
      if (event.kind) this.known.kind.add(event.kind);
    }
    if (this.events.size > KEEP) {
      const sorted = [...this.events.entries()].sort((a, b) => order(a[1], b[1]));
      this.events = new Map(sorted.slice(sorted.length - KEEP));
    }
    this.render();
  }

  /** Offer the hosts and kernels the cluster has now in the filters, beside those seen in events. */
  learn(hosts, kernels) {
    for (const host of hosts || []) this.known.host.add(host.name);
    for (const kernel of kernels || []) this.known.kernel.add(kernel.id);
    this.renderOptions();
  }

  async filterChanged() {
    this.render();
    const { host, kernel, kind } = this.filters();
    if (!host && !kernel && !kind) return;
    try {
      const data = await this.api.get("events", { host, kernel, kind, limit: FILTER_FETCH });
      if (data && Array.isArray(data.events)) this.add(data.events);
    } catch (err) {
      this.note.textContent = `Older matching events unavailable: ${err.message}`;
    }
  }

  renderOptions() {
    for (const name of ["host", "kernel", "kind"]) {
      const select = this.form.elements.namedItem(name);
      const have = new Set([...select.options].map((o) => o.value));
      const missing = [...this.known[name]].filter((v) => !have.has(v)).sort();
      for (const value of missing) {
        select.append(h("option", { value }, name === "kernel" ? `${shortId(value)} (${value})` : value));
      }
    }
  }

  render() {
    this.renderOptions();
    const { host, kernel, kind } = this.filters();
    const matching = [...this.events.values()]
      .filter((e) => (!host || e.host === host) && (!kernel || e.kernel === kernel) && (!kind || e.kind === kind))
      .sort((a, b) => order(b, a));
    render(this.body, matching.slice(0, SHOW).map(row));
    const filtered = host || kernel || kind;
    this.note.textContent = matching.length
      ? `${Math.min(matching.length, SHOW)} of ${matching.length} ${filtered ? "matching " : ""}events, newest first.`
      : filtered ? "No event matches these filters." : "No events yet.";
  }
}

function order(a, b) {
  if (isNum(a.seq) && isNum(b.seq)) return a.seq - b.seq;
  return (a.time || 0) - (b.time || 0);
}

function row(event) {
  const kind = text(event.kind);
  const kindClass = isExecutionKind(event.kind) ? "kind-exec" : kind.startsWith("host_") ? "kind-host" : "kind-other";
  return h("tr", { "data-testid": "event", dataset: { seq: event.seq, kind, host: event.host || "",
    kernel: event.kernel || "" } },
  h("td", { class: "num" }, clock(event.time)),
  h("td", {}, h("span", { class: `kind ${kindClass}` }, kind),
    event.data && typeof event.data.kind === "string" ? h("span", { class: "muted" }, ` ${event.data.kind}`) : null),
  h("td", {}, text(event.host)),
  h("td", { title: event.kernel || "" }, event.kernel ? shortId(event.kernel) : text(null)),
  h("td", { class: "num" }, num(event.replica)),
  h("td", { class: "reason" }, text(event.reason)));
}
