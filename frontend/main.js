// The dashboard's entry point: reads the settings the server put in the page, loads the models, follows the event
// stream, and keeps the views drawn.
//
// Freshness comes from the event stream (each event refreshes the models it touches); a slow poll is the safety
// net for anything the stream missed, and the history behind the charts is fetched on its own, slower schedule.

import { adminActions, ConfirmDialog, Outcomes } from "./actions.js";
import { Api } from "./api.js";
import { duration, nowSeconds } from "./format.js";
import { LiveEvents, modelsAffectedBy } from "./live.js";
import { LIVE_MODELS, Store } from "./store.js";
import { Charts } from "./charts-view.js";
import { renderHosts, renderSummary } from "./cluster-view.js";
import { EventLog } from "./events-view.js";
import { renderKernels } from "./kernels-view.js";

const SAFETY_POLL_MS = 15000;
const HISTORY_POLL_MS = 30000;
const CLOCK_TICK_MS = 1000;
const VIEWS = ["cluster", "kernels", "events"];

const $ = (selector) => document.querySelector(selector);

function readSettings() {
  const raw = document.getElementById("notebookos-settings")?.textContent || "{}";
  try {
    const settings = JSON.parse(raw);
    return { baseUrl: settings.baseUrl || "/", admin: Boolean(settings.admin), user: settings.user || "" };
  } catch {
    return { baseUrl: "/", admin: false, user: "" };
  }
}

/** `#kernels/<id>` -> {view: "kernels", selected: id}; unknown addresses show the cluster view. */
function route() {
  const [view, ...rest] = window.location.hash.replace(/^#/, "").split("/");
  return {
    view: VIEWS.includes(view) ? view : "cluster",
    selected: rest.length ? decodeURIComponent(rest.join("/")) : null,
  };
}

function main() {
  const settings = readSettings();
  const api = new Api(settings.baseUrl);
  const store = new Store(api);
  const outcomes = new Outcomes($('[data-testid="outcomes"]'));
  const actions = adminActions(api, store, new ConfirmDialog($('[data-testid="confirm-dialog"]')), outcomes);
  const ctx = { admin: false, actions, hosts: () => store.data.hosts || [] };
  const charts = new Charts($('[data-testid="charts"]'), $('[data-testid="charts-note"]'));
  const eventLog = new EventLog($('[data-testid="view-events"]'), api);

  setPermissions(ctx, settings.admin, settings.user, null);

  const draw = (changed) => {
    const current = route();
    if (changed.includes("me")) {
      const me = store.data.me;
      setPermissions(ctx, me ? Boolean(me.admin) : settings.admin, me?.name ?? settings.user, store.errors.me);
    }
    renderSummary($('[data-testid="summary"]'), store);
    renderHosts($('[data-testid="hosts"]'), store, ctx);
    renderKernels($('[data-testid="kernels"]'), store, ctx, current.view === "kernels" ? current.selected : null);
    eventLog.learn(store.data.hosts, store.data.kernels);
    if (changed.includes("history")) charts.update(store.data.history, store.errors.history);
    showApiError(store);
    tickClocks();
  };
  store.subscribe(draw);

  const showView = () => {
    const current = route();
    for (const section of document.querySelectorAll("main .view")) {
      section.hidden = section.dataset.view !== current.view;
    }
    for (const tab of document.querySelectorAll(".tabs a")) {
      if (tab.dataset.view === current.view) tab.setAttribute("aria-current", "page");
      else tab.removeAttribute("aria-current");
    }
    if (current.view === "cluster") charts.draw();
    if (current.view === "kernels") {
      renderKernels($('[data-testid="kernels"]'), store, ctx, current.selected);
      if (current.selected) {
        const card = document.getElementById(`kernel-${current.selected}`);
        if (card) card.scrollIntoView({ block: "nearest" });
      }
    }
  };
  window.addEventListener("hashchange", showView);
  showView();

  $('[data-testid="action-add-host"]').addEventListener("click", () => actions.addHost());

  const live = new LiveEvents(api, {
    onEvents: (events) => {
      eventLog.add(events);
      const stale = new Set();
      for (const event of events) for (const model of modelsAffectedBy(event.kind)) stale.add(model);
      store.schedule([...stale]);
    },
    onStatus: (state, detail) => {
      const el = $('[data-testid="live-status"]');
      el.dataset.state = state;
      el.textContent = state === "live" ? "live" : state === "connecting" ? "connecting…" : "polling";
      el.title = detail;
    },
    onReconnect: () => store.refresh(LIVE_MODELS),
  });

  store.refresh(["me", ...LIVE_MODELS, "history"]);
  live.start();
  window.setInterval(() => store.schedule(LIVE_MODELS), SAFETY_POLL_MS);
  window.setInterval(() => store.schedule(["history"]), HISTORY_POLL_MS);
  window.setInterval(tickClocks, CLOCK_TICK_MS);
}

/**
 * Show or hide what only admins may do. The API enforces it regardless; this only spares a user buttons that would
 * be refused.
 */
function setPermissions(ctx, admin, user, meError) {
  ctx.admin = admin;
  document.body.classList.toggle("read-only", !admin);
  for (const el of document.querySelectorAll(".admin-only")) el.hidden = !admin;
  document.body.dataset.admin = String(admin);
  $('[data-testid="readonly-banner"]').hidden = admin;
  const who = $('[data-testid="who"]');
  who.textContent = `${user || "signed in"} · ${admin ? "admin" : "read-only"}`;
  who.title = meError ? `permissions from the page (GET me failed: ${meError.message})` : "";
}

/** One banner for the API being unreachable (e.g. no cluster: 503 with what to do), not one per model. */
function showApiError(store) {
  const banner = $('[data-testid="api-error"]');
  const errors = LIVE_MODELS.map((name) => store.errors[name]).filter(Boolean);
  const messages = [...new Set(errors.map((e) => e.message))];
  banner.hidden = messages.length === 0;
  banner.textContent = messages.join(" ");
}

/** Refresh every "for 12 s" on the page from its `data-since` time. */
function tickClocks() {
  const now = nowSeconds();
  for (const el of document.querySelectorAll("[data-since]")) {
    el.textContent = duration(Math.max(0, now - Number(el.dataset.since)));
  }
}

main();
