// The kernels view: one card per kernel with its owner, notebook, GPU request, three replicas and its current or
// last cell.
//
// A cell's timing reads as the user felt it: the wait from submit to start (the interactivity delay the scheduler
// is judged by), the run time, and the cost of binding and releasing its GPUs.

import { h, render } from "./dom.js";
import { DASH, between, clock, duration, isNum, num, shortId, text } from "./format.js";

/** A replica's state; without the field, derived from whether its process is alive. */
export function replicaState(replica) {
  if (typeof replica.state === "string") return replica.state;
  if (replica.alive === true) return "alive";
  if (replica.alive === false) return "lost";
  return DASH;
}

function replicaRow(kernel, replica, ctx) {
  const state = replicaState(replica);
  const key = (what) => `${what}:${kernel.id}:${replica.index}`;
  return h("tr", {
    "data-testid": "replica",
    dataset: { replica: replica.index, host: replica.host, state, role: replica.role || "", pid: replica.pid ?? "",
      alive: replica.alive === undefined ? "" : String(replica.alive), restarts: replica.restarts ?? "" },
  },
  h("td", {}, num(replica.index)),
  h("td", {}, text(replica.host)),
  h("td", {}, replica.role === "executor" ? h("strong", {}, "executor") : text(replica.role)),
  h("td", {}, h("span", { class: `badge state-${state}` }, state.replace(/_/g, " "))),
  h("td", { class: "num" }, num(replica.pid)),
  h("td", { class: "num" }, num(replica.restarts)),
  ctx.admin
    ? h("td", {}, h("div", { class: "row-actions" },
      h("button", { type: "button", "data-testid": "action-kill", "data-focus-key": key("kill"),
        onclick: () => ctx.actions.killReplica(kernel, replica) }, "Kill…"),
      h("button", { type: "button", "data-testid": "action-migrate", "data-focus-key": key("migrate"),
        onclick: () => ctx.actions.migrateReplica(kernel, replica, ctx.hosts()) }, "Migrate…")))
    : null);
}

function cellBlock(cell) {
  if (!cell || typeof cell !== "object") {
    return h("p", { class: "muted", "data-testid": "kernel-cell", dataset: { state: "none" } }, "No cell has run yet.");
  }
  const state = typeof cell.state === "string" ? cell.state : DASH;
  const wait = between(cell.submitted, cell.started);
  const running = state === "running" && isNum(cell.started);
  const devices = Array.isArray(cell.devices) && cell.devices.length ? cell.devices.join(", ") : null;
  const where = cell.host ? `${cell.host}${devices !== null ? ` · GPU ${devices}` : ""}` : DASH;
  return h("div", { class: "cell", "data-testid": "kernel-cell", dataset: { state } },
    h("h4", {}, state === "done" ? "Last cell" : "Current cell", " ",
      h("span", { class: `badge cell-${state}` }, state)),
    h("dl", { class: "facts facts-wide" },
      h("dt", {}, "GPUs"), h("dd", {}, num(cell.gpus)),
      h("dt", {}, "Decision"), h("dd", {}, text(cell.decision),
        cell.reason ? h("span", { class: "muted" }, ` — ${cell.reason}`) : null),
      h("dt", {}, "Where"), h("dd", {}, where),
      h("dt", {}, "Submitted"), h("dd", {}, clock(cell.submitted)),
      h("dt", {}, "Started"), h("dd", {}, clock(cell.started),
        wait !== null ? h("span", { class: "muted" }, ` after ${duration(wait)}`) : null),
      h("dt", {}, "Ended"), h("dd", {}, clock(cell.ended),
        isNum(cell.ended) && isNum(cell.started)
          ? h("span", { class: "muted" }, ` ran ${duration(cell.ended - cell.started)}`)
          : running ? [h("span", { class: "muted" }, " running for "),
            h("span", { class: "since muted", dataset: { since: cell.started } }, DASH)] : null),
      h("dt", {}, "Bind"), h("dd", {}, duration(cell.bind_s)),
      h("dt", {}, "Release"), h("dd", {}, duration(cell.release_s))));
}

function kernelCard(kernel, ctx, selected) {
  const replicas = Array.isArray(kernel.replicas) ? kernel.replicas : [];
  const alive = isNum(kernel.replicas_alive) ? kernel.replicas_alive : replicas.filter((r) => r.alive).length;
  return h("article", {
    class: `card kernel${selected ? " selected" : ""}`, id: `kernel-${kernel.id}`, "data-testid": "kernel-card",
    dataset: { kernel: kernel.id }, "aria-label": `kernel ${kernel.id}`, tabindex: selected ? "-1" : null,
  },
  h("header", { class: "card-head" },
    h("h3", { title: kernel.id }, `Kernel ${shortId(kernel.id)}`),
    h("span", { class: "muted kernel-id" }, kernel.id),
    ctx.admin
      ? h("button", { type: "button", class: "danger", "data-testid": "action-shutdown",
        "data-focus-key": `shutdown:${kernel.id}`, onclick: () => ctx.actions.shutdownKernel(kernel) }, "Shut down…")
      : null),
  h("dl", { class: "facts facts-wide" },
    h("dt", {}, "Owner"), h("dd", { "data-testid": "kernel-owner" }, text(kernel.owner)),
    h("dt", {}, "Notebook"), h("dd", { "data-testid": "kernel-notebook" }, text(kernel.notebook)),
    h("dt", {}, "GPUs per cell"), h("dd", {}, num(kernel.gpus)),
    h("dt", {}, "Replicas"), h("dd", {}, `${num(alive)} alive of ${replicas.length}`)),
  h("div", { class: "table-wrap" },
    h("table", { class: "replicas", "aria-label": `replicas of kernel ${kernel.id}` },
      h("thead", {}, h("tr", {},
        ["#", "host", "role", "state", "pid", "restarts"].map((c) => h("th", { scope: "col" }, c)),
        ctx.admin ? h("th", { scope: "col" }, h("span", { class: "visually-hidden" }, "actions")) : null)),
      h("tbody", {}, replicas.map((r) => replicaRow(kernel, r, ctx))))),
  cellBlock(kernel.cell));
}

/**
 * The kernel cards; `selectedId` (from the address, `#kernels/<id>`) is highlighted.
 * @param {HTMLElement} el
 * @param {import("./store.js").Store} store
 * @param {import("./cluster-view.js").Context & {hosts: () => object[]}} ctx
 * @param {string|null} selectedId
 */
export function renderKernels(el, store, ctx, selectedId) {
  const { kernels } = store.data;
  if (!kernels) {
    const err = store.errors.kernels;
    render(el, [h("p", { class: "muted" }, err ? `Kernels unavailable: ${err.message}` : "Loading kernels…")]);
    return;
  }
  if (!kernels.length) {
    render(el, [h("p", { class: "muted", "data-testid": "no-kernels" }, "No kernels run on the cluster.")]);
    return;
  }
  render(el, kernels.map((k) => kernelCard(k, ctx, k.id === selectedId)));
}
