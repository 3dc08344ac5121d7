// The cluster view: the summary line and one card per host with its GPUs.
//
// A GPU reads idle, pending (pre-committed to a cell about to start) or committed, with the kernel and replica that
// hold it and for how long (`data-since`, which the page's clock ticks). Host cards carry the admin actions that
// fit the host's state: drain an active host, remove a drained or lost one, change the GPU count.

import { h, render } from "./dom.js";
import { DASH, clock, isNum, num, ratio, shortId, text } from "./format.js";

/** @typedef {{admin: boolean, actions: ReturnType<typeof import("./actions.js").adminActions>}} Context */

/** GPUs of the cluster: the cluster model's counts, else what the hosts and GPUs models add up to. */
function gpuTotals(cluster, hosts, gpus) {
  const counts = cluster && cluster.gpus && typeof cluster.gpus === "object" ? cluster.gpus : {};
  const fromHosts = (key) => (hosts && hosts.every((x) => isNum(x[key]))
    ? hosts.reduce((sum, x) => sum + x[key], 0)
    : null);
  const byState = (state) => (gpus ? gpus.filter((g) => gpuState(g) === state).length : null);
  return {
    total: isNum(counts.total) ? counts.total : fromHosts("gpus"),
    idle: isNum(counts.idle) ? counts.idle : fromHosts("idle_gpus"),
    pending: isNum(counts.pending) ? counts.pending : byState("pending"),
    committed: isNum(counts.committed) ? counts.committed : byState("committed"),
  };
}

/** A GPU's state; without the field, one held by a kernel counts as committed. */
export function gpuState(gpu) {
  if (typeof gpu.state === "string") return gpu.state;
  return gpu.kernel ? "committed" : "idle";
}

function tile(key, label, value, detail) {
  return h("div", { class: "tile", "data-testid": `summary-${key}` },
    h("span", { class: "tile-label" }, label),
    h("span", { class: "tile-value" }, value),
    detail ? h("span", { class: "tile-detail" }, detail) : null);
}

/**
 * The summary above the views.
 * @param {HTMLElement} el
 * @param {import("./store.js").Store} store
 */
export function renderSummary(el, store) {
  const { cluster, hosts, gpus } = store.data;
  const totals = gpuTotals(cluster, hosts, gpus);
  const replicas = cluster && cluster.replicas ? cluster.replicas : {};
  const states = {};
  for (const host of hosts || []) {
    const state = host.state || "active";
    states[state] = (states[state] || 0) + 1;
  }
  const hostDetail = Object.entries(states).map(([state, n]) => `${n} ${state}`).join(", ");
  const limit = cluster && isNum(cluster.subscription_limit) ? `limit ${ratio(cluster.subscription_limit)}` : null;
  render(el, [
    tile("hosts", "Hosts", hosts ? String(hosts.length) : DASH, hostDetail || null),
    tile("gpus", "GPUs committed", `${num(totals.committed)} / ${num(totals.total)}`,
      `${num(totals.idle)} idle, ${num(totals.pending)} pending`),
    tile("subscription", "Subscription", ratio(cluster?.subscription_ratio), limit),
    tile("kernels", "Kernels", num(cluster?.kernels ?? store.data.kernels?.length),
      `replicas ${num(replicas.alive)} alive of ${num(replicas.total)}`),
    tile("pending", "Pending cells", num(cluster?.pending_cells),
      isNum(cluster?.pending_hosts) && cluster.pending_hosts > 0 ? `${cluster.pending_hosts} hosts requested` : null),
    tile("policy", "Policy", text(cluster?.policy),
      isNum(cluster?.max_hosts) ? `at most ${cluster.max_hosts} hosts` : null),
    // A restart of the cluster service shows as a new pid and start time.
    tile("service", "Cluster service", isNum(cluster?.pid) ? `pid ${cluster.pid}` : DASH,
      isNum(cluster?.started_at) ? `up since ${clock(cluster.started_at)}` : null),
  ]);
}

/** A link to a kernel's card in the kernels view; the full id is its tooltip. */
function kernelLink(id, label) {
  return h("a", { href: `#kernels/${encodeURIComponent(id)}`, title: id }, label);
}

function gpuItem(gpu) {
  const state = gpuState(gpu);
  const holder = gpu.kernel
    ? [" · ", kernelLink(gpu.kernel, `kernel ${shortId(gpu.kernel)}`),
      isNum(gpu.replica) ? ` replica ${gpu.replica}` : null]
    : null;
  const since = state !== "idle" && isNum(gpu.since)
    ? [" · for ", h("span", { class: "since", dataset: { since: gpu.since } }, DASH)]
    : null;
  return h("li", {
    class: `gpu gpu-${state}`, "data-testid": "gpu",
    dataset: { host: gpu.host, device: gpu.device, state, kernel: gpu.kernel || "" },
  }, h("span", { class: "gpu-dot", "aria-hidden": "true" }), h("span", {}, `GPU ${num(gpu.device)} `),
  h("strong", {}, state), holder, since);
}

function hostActions(host, ctx) {
  const state = host.state || "active";
  // A host still starting has no agent yet: nothing to drain, remove or resize.
  if (!ctx.admin || state === "starting") return null;
  const key = (what) => `${what}:${host.name}`;
  return h("div", { class: "card-actions" },
    state === "active"
      ? h("button", { type: "button", "data-testid": "action-drain", "data-focus-key": key("drain"),
        onclick: () => ctx.actions.drainHost(host) }, "Drain…")
      : null,
    state === "draining" || state === "lost"
      ? h("button", { type: "button", class: "danger", "data-testid": "action-remove", "data-focus-key": key("remove"),
        onclick: () => ctx.actions.removeHost(host) }, "Remove…")
      : null,
    h("button", { type: "button", "data-testid": "action-resize", "data-focus-key": key("resize"),
      onclick: () => ctx.actions.resizeHost(host) }, "GPUs…"));
}

function hostCard(host, gpus, limit, ctx) {
  const state = host.state || "active";
  const own = (gpus || []).filter((g) => g.host === host.name).sort((a, b) => a.device - b.device);
  const ratioValue = isNum(host.subscription_ratio) ? host.subscription_ratio : null;
  const kernels = Array.isArray(host.kernels) ? host.kernels : [];
  return h("article", {
    class: `card host host-${state}`, "data-testid": "host-card",
    dataset: { host: host.name, state, replicas: isNum(host.replicas) ? host.replicas : "" },
    "aria-label": `host ${host.name}`,
  },
  h("header", { class: "card-head" },
    h("h3", {}, host.name),
    h("span", { class: `badge state-${state}`, "data-testid": "host-state" }, state)),
  h("dl", { class: "facts" },
    h("dt", {}, "GPUs"), h("dd", { "data-testid": "host-gpus" }, `${num(host.idle_gpus)} idle of ${num(host.gpus)}`),
    h("dt", {}, "Subscribed"), h("dd", {},
      `${ratio(ratioValue)} `,
      h("span", { class: "muted" }, `(${num(host.subscribed_gpus)} GPUs requested)`),
      ratioValue !== null && isNum(limit)
        ? h("meter", { min: 0, max: limit, high: limit * 0.8, optimum: 0, value: Math.min(ratioValue, limit),
          "aria-label": `subscription ${ratio(ratioValue)} of limit ${ratio(limit)}` })
        : null),
    h("dt", {}, "Replicas"), h("dd", { "data-testid": "host-replicas" },
      `${num(host.replicas)} placed, ${num(host.replicas_alive)} alive`),
    h("dt", {}, "Kernels"), h("dd", {}, kernels.length
      ? kernels.map((id, i) => [i ? ", " : "", kernelLink(id, shortId(id))])
      : DASH)),
  own.length
    ? h("ul", { class: "gpus", "aria-label": `GPUs of ${host.name}` }, own.map(gpuItem))
    : h("p", { class: "muted" }, "GPU details unavailable."),
  hostActions(host, ctx));
}

/**
 * The host cards.
 * @param {HTMLElement} el
 * @param {import("./store.js").Store} store
 * @param {Context} ctx
 */
export function renderHosts(el, store, ctx) {
  const { hosts, gpus, cluster } = store.data;
  if (!hosts) {
    const err = store.errors.hosts;
    render(el, [h("p", { class: "muted" }, err ? `Hosts unavailable: ${err.message}` : "Loading hosts…")]);
    return;
  }
  if (!hosts.length) {
    render(el, [h("p", { class: "muted" }, "The cluster has no hosts.")]);
    return;
  }
  render(el, hosts.map((host) => hostCard(host, gpus, cluster?.subscription_limit, ctx)));
}
