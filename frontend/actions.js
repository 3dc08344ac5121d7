// Admin actions: each asks for confirmation in a modal dialog, calls the API, and reports its outcome on the page.
//
// The page offers actions only to admins (`GET me`), but the API decides: whatever it answers, success or its error
// message (a 409 "drain it first", a 403 for a user whose rights changed), is shown in the outcomes area. After a
// success the affected models are fetched at once rather than waiting for the event stream.

import { h, render } from "./dom.js";
import { isNum, shortId } from "./format.js";

const MAX_OUTCOMES = 4;

/**
 * @typedef {{name: string, label: string, type: "number"|"select", min?: number, value?: string|number,
 *            options?: {value: string, label: string}[], required?: boolean, hint?: string}} Field
 */

/** The confirmation dialog (a native <dialog>: modal, focus kept inside, Escape cancels). */
export class ConfirmDialog {
  /** @param {HTMLDialogElement} dialog */
  constructor(dialog) {
    this.dialog = dialog;
    this.form = dialog.querySelector("form");
    this.dialog.querySelector('[data-testid="cancel"]').addEventListener("click", () => this.dialog.close("cancel"));
  }

  /**
   * Ask; resolves to the fields' values (numbers for number fields) when confirmed, or null when cancelled.
   * @param {{title: string, text: string, confirm: string, danger?: boolean, fields?: Field[]}} spec
   * @returns {Promise<Record<string, string|number>|null>}
   */
  ask(spec) {
    const { dialog } = this;
    if (dialog.open) return Promise.resolve(null); // one question at a time
    dialog.querySelector("#confirm-title").textContent = spec.title;
    dialog.querySelector(".confirm-text").textContent = spec.text;
    const confirm = dialog.querySelector('[data-testid="confirm"]');
    confirm.textContent = spec.confirm;
    confirm.classList.toggle("danger", Boolean(spec.danger));
    const fields = spec.fields || [];
    render(dialog.querySelector(".confirm-fields"), fields.map(fieldElement));
    dialog.returnValue = "";
    return new Promise((resolve) => {
      dialog.addEventListener("close", () => {
        if (dialog.returnValue !== "confirm") {
          resolve(null);
          return;
        }
        const values = {};
        for (const field of fields) {
          const raw = this.form.elements.namedItem(field.name).value;
          values[field.name] = field.type === "number" && raw !== "" ? Number(raw) : raw;
        }
        resolve(values);
      }, { once: true });
      dialog.showModal();
      const first = dialog.querySelector(".confirm-fields input, .confirm-fields select");
      (first || confirm).focus();
    });
  }
}

/** @param {Field} field */
function fieldElement(field) {
  const id = `field-${field.name}`;
  const control = field.type === "select"
    ? h("select", { id, name: field.name, required: field.required !== false, "data-testid": `field-${field.name}` },
      (field.options || []).map((o) => h("option", { value: o.value, selected: o.value === field.value }, o.label)))
    : h("input", {
      id, name: field.name, type: "number", inputmode: "numeric", min: field.min ?? 1, step: 1,
      value: field.value ?? "", required: field.required !== false, "data-testid": `field-${field.name}`,
    });
  return h("div", { class: "field" },
    h("label", { for: id }, field.label),
    control,
    field.hint ? h("p", { class: "muted" }, field.hint) : null);
}

/** The outcomes area: the latest few actions, each pending, done or failed with the API's message. */
export class Outcomes {
  /** @param {HTMLElement} container */
  constructor(container) {
    this.container = container;
  }

  /** Add a pending entry; returns a function that settles it: `settle(ok, message)`. */
  start(action, message) {
    const text = h("span", { class: "outcome-text" }, message);
    const entry = h("div", {
      class: "outcome", "data-testid": "action-outcome", dataset: { action, status: "pending" },
    },
      text,
      h("button", {
        type: "button", class: "outcome-close", "aria-label": "Dismiss", title: "Dismiss",
        onclick: () => entry.remove(),
      }, "×"));
    this.container.prepend(entry);
    while (this.container.children.length > MAX_OUTCOMES) this.container.lastElementChild.remove();
    return (ok, result) => {
      entry.dataset.status = ok ? "ok" : "error";
      entry.setAttribute("role", ok ? "status" : "alert");
      text.textContent = result;
    };
  }
}

/**
 * The admin actions, bound to the API, the store, the dialog and the outcomes area.
 * @param {import("./api.js").Api} api
 * @param {import("./store.js").Store} store
 * @param {ConfirmDialog} dialog
 * @param {Outcomes} outcomes
 */
export function adminActions(api, store, dialog, outcomes) {
  /**
   * Confirm, then call the API and report. `call` gets the dialog's values; `done` words the success.
   * @param {string} action
   * @param {{title: string, text: string, confirm: string, danger?: boolean, fields?: Field[]}} spec
   * @param {(values: Record<string, any>) => Promise<any>} call
   * @param {(result: any, values: Record<string, any>) => string} done
   * @param {string} pendingText
   * @param {string[]} refresh
   */
  async function perform(action, spec, call, done, pendingText, refresh) {
    const values = await dialog.ask(spec);
    if (values === null) return;
    const settle = outcomes.start(action, pendingText);
    try {
      const result = await call(values);
      settle(true, done(result, values));
      store.refresh(refresh);
    } catch (err) {
      settle(false, `${spec.title} failed: ${err.message}`);
      store.schedule(refresh);
    }
  }

  const hostModels = ["cluster", "hosts", "gpus", "kernels"];
  const kernelModels = ["cluster", "hosts", "gpus", "kernels"];
  const enc = encodeURIComponent;

  return {
    addHost() {
      return perform("add-host", {
        title: "Add a host",
        text: "A new logical host joins the pool; kernels can be placed on it once it is active.",
        confirm: "Add host",
        fields: [{ name: "gpus", label: "GPUs", type: "number", min: 1, required: false,
          hint: "Leave empty for the cluster's default GPUs per host." }],
      }, (v) => api.post("hosts", v.gpus === "" ? {} : { gpus: v.gpus }),
      (host) => `Added host ${host?.name ?? "(unnamed)"}${isNum(host?.gpus) ? ` with ${host.gpus} GPU(s)` : ""}.`,
      "Adding a host…", hostModels);
    },

    drainHost(host) {
      return perform("drain-host", {
        title: `Drain ${host.name}`,
        text: `No new replicas will be placed on ${host.name}, and its idle replicas move to other hosts. ` +
          "Replicas running a cell move once the cell is over.",
        confirm: "Drain", danger: true,
      }, () => api.post(`hosts/${enc(host.name)}/drain`),
      (h2) => `${host.name} is ${h2?.state ?? "draining"}.`, `Draining ${host.name}…`, hostModels);
    },

    removeHost(host) {
      return perform("remove-host", {
        title: `Remove ${host.name}`,
        text: `${host.name} leaves the pool. Only a drained host (no replicas left) can be removed.`,
        confirm: "Remove", danger: true,
      }, () => api.delete(`hosts/${enc(host.name)}`),
      () => `Removed ${host.name}.`, `Removing ${host.name}…`, hostModels);
    },

    resizeHost(host) {
      return perform("resize-host", {
        title: `Change ${host.name}'s GPUs`,
        text: "A logical host's GPU count can change while none of its GPUs is committed to a cell.",
        confirm: "Change",
        fields: [{ name: "gpus", label: "GPUs", type: "number", min: 1, value: host.gpus ?? "" }],
      }, (v) => api.patch(`hosts/${enc(host.name)}`, { gpus: v.gpus }),
      (h2, v) => `${host.name} now has ${h2?.gpus ?? v.gpus} GPU(s).`, `Changing ${host.name}'s GPUs…`, hostModels);
    },

    killReplica(kernel, replica) {
      return perform("kill-replica", {
        title: `Kill replica ${replica.index} of ${shortId(kernel.id)}`,
        text: `A fault drill: replica ${replica.index} on ${replica.host} is killed (SIGKILL). The kernel goes on ` +
          "with the other two, and a replacement catches up from the Raft log.",
        confirm: "Kill replica", danger: true,
      }, () => api.post(`kernels/${enc(kernel.id)}/replicas/${replica.index}/kill`),
      () => `Killed replica ${replica.index} of ${shortId(kernel.id)}; a replacement is on its way.`,
      `Killing replica ${replica.index} of ${shortId(kernel.id)}…`, kernelModels);
    },

    migrateReplica(kernel, replica, hosts) {
      const taken = new Set((kernel.replicas || []).map((r) => r.host));
      const options = hosts.filter((x) => !taken.has(x.name) && (x.state ?? "active") === "active")
        .map((x) => ({ value: x.name, label: `${x.name} (${x.idle_gpus ?? "?"} of ${x.gpus ?? "?"} GPUs idle)` }));
      return perform("migrate-replica", {
        title: `Migrate replica ${replica.index} of ${shortId(kernel.id)}`,
        text: options.length
          ? `Replica ${replica.index} moves from ${replica.host} to the host you choose, and catches up there.`
          : "Every active host already holds a replica of this kernel: there is nowhere to move it.",
        confirm: "Migrate",
        fields: [{ name: "host", label: "To host", type: "select", options }],
      }, (v) => api.post(`kernels/${enc(kernel.id)}/replicas/${replica.index}/migrate`, { host: v.host }),
      (_k, v) => `Replica ${replica.index} of ${shortId(kernel.id)} moved to ${v.host}.`,
      `Migrating replica ${replica.index} of ${shortId(kernel.id)}…`, kernelModels);
    },

    shutdownKernel(kernel) {
      return perform("shutdown-kernel", {
        title: `Shut down kernel ${shortId(kernel.id)}`,
        text: `The kernel${kernel.notebook ? ` of ${kernel.notebook}` : ""} and its three replicas stop; ` +
          "its variables are lost and its notebook shows it as dead.",
        confirm: "Shut down", danger: true,
      }, () => api.delete(`kernels/${enc(kernel.id)}`),
      () => `Shut down kernel ${shortId(kernel.id)}.`, `Shutting down ${shortId(kernel.id)}…`, kernelModels);
    },
  };
}
