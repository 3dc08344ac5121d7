// Charts of the last hour, from `GET history`, drawn with the vendored uPlot (frontend/uplot-1.6.32, MIT).
//
// uPlot draws on canvas, so it cannot take colours from CSS by itself: they are read from the page's custom
// properties when a chart is made, and the charts are made again when the colour scheme changes. Widths follow
// the layout through a ResizeObserver; the resize itself waits for the next frame so that resizing a chart never
// feeds back into the observation that triggered it.

import uPlot from "./uplot-1.6.32/uPlot.esm.js";
import { isNum } from "./format.js";

const HEIGHT = 170;
const WINDOW_S = 3600;
const MIN_SPAN_S = 120;

/**
 * @typedef {{key: string, label: string, color: string, bars?: -1|0|1, dash?: number[], step?: boolean}} SeriesSpec
 * @typedef {{testid: string, unit: string, series: SeriesSpec[], integer?: boolean}} ChartSpec
 */

/** @type {ChartSpec[]} */
const CHARTS = [
  { testid: "chart-gpus", unit: "", integer: true, series: [
    { key: "gpus_committed", label: "committed", color: "--chart-1", step: true },
    { key: "gpus_total", label: "total", color: "--chart-2", dash: [6, 4], step: true },
  ] },
  { testid: "chart-pending", unit: "", integer: true, series: [
    { key: "pending_cells", label: "pending cells", color: "--chart-3", step: true },
  ] },
  { testid: "chart-delay", unit: " s", series: [
    { key: "delay_p50", label: "p50", color: "--chart-1" },
    { key: "delay_p99", label: "p99", color: "--chart-4" },
  ] },
  { testid: "chart-moves", unit: "", integer: true, series: [
    { key: "migrations", label: "migrations", color: "--chart-2", bars: -1 },
    { key: "scale_events", label: "scale events", color: "--chart-3", bars: 1 },
  ] },
];

function cssVar(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
}

/** Columns for uPlot: times, then one array per series (null where a sample lacks the value). */
function columns(samples, spec) {
  const times = samples.map((s) => s.time);
  return [times, ...spec.series.map((ser) => samples.map((s) => (isNum(s[ser.key]) ? s[ser.key] : null)))];
}

/**
 * The x range: up to now, over the last hour, or over the data's whole span when the cluster is younger than that
 * (a fresh cluster's first minutes would be a sliver at the right edge of an hour-wide chart).
 */
function timeRange(min, max) {
  const end = Math.max(isNum(max) ? max : 0, Date.now() / 1000);
  const start = isNum(min) ? Math.max(min, end - WINDOW_S) : end - WINDOW_S;
  return [Math.min(start, end - MIN_SPAN_S), end];
}

function options(spec, width) {
  const fg = cssVar("--muted");
  const grid = cssVar("--grid");
  const axis = { stroke: fg, grid: { stroke: grid, width: 1 }, ticks: { stroke: grid, width: 1 } };
  return {
    width,
    height: HEIGHT,
    scales: {
      x: { time: true, range: (_u, min, max) => timeRange(min, max) },
      y: { range: (_u, _min, max) => [0, Math.max(spec.integer ? 1 : 0.01, isNum(max) ? max * 1.1 : 1)] },
    },
    axes: [
      axis,
      { ...axis, size: spec.integer ? 40 : 64, values: (_u, ticks) => ticks.map((v) => `${+v.toFixed(spec.integer ? 0 : 3)}${spec.unit}`),
        incrs: spec.integer ? [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000] : undefined },
    ],
    series: [
      {},
      ...spec.series.map((s) => ({
        label: s.label,
        stroke: cssVar(s.color),
        fill: s.bars !== undefined ? cssVar(s.color) : undefined,
        width: s.bars !== undefined ? 0 : 2,
        dash: s.dash,
        spanGaps: false,
        points: s.bars !== undefined ? { show: false } : undefined, // lines get uPlot's points when data is sparse
        value: (_u, v) => (v === null || v === undefined ? "—" : `${+v.toFixed(3)}${spec.unit}`),
        paths: s.bars !== undefined ? uPlot.paths.bars({ size: [0.4, 24], align: s.bars })
          : s.step ? uPlot.paths.stepped({ align: 1 }) : undefined,
      })),
    ],
    cursor: { drag: { x: false, y: false } },
    legend: { show: true, live: true },
  };
}

export class Charts {
  /**
   * @param {HTMLElement} root the element holding the <figure>s
   * @param {HTMLElement} note where to say that history is unavailable
   */
  constructor(root, note) {
    this.root = root;
    this.note = note;
    this.samples = null;
    /** @type {Map<string, {plot: uPlot, body: HTMLElement, spec: ChartSpec}>} */
    this.charts = new Map();
    this.resizeObserver = new ResizeObserver(() => this.scheduleResize());
    this.resizeObserver.observe(root);
    this.frame = 0;
    window.matchMedia("(prefers-color-scheme: dark)").addEventListener("change", () => this.rebuild());
  }

  /**
   * Show a history answer (`{interval_s, samples}`), or say why there is none.
   * @param {{samples?: object[]}|undefined} history
   * @param {Error|undefined} error
   */
  update(history, error) {
    if (!history) {
      if (error) {
        this.note.hidden = false;
        this.note.textContent = `History unavailable: ${error.message}`;
        this.root.hidden = this.samples === null; // keep the last charts drawn, else no empty frames
      }
      return;
    }
    this.note.hidden = true;
    this.root.hidden = false;
    this.samples = Array.isArray(history.samples) ? history.samples.filter((s) => s && isNum(s.time)) : [];
    this.samples.sort((a, b) => a.time - b.time);
    this.root.dataset.samples = String(this.samples.length); // how much history is drawn (tests wait on it)
    if (this.root.offsetParent === null) return; // not visible (another view): drawn when shown
    this.draw();
  }

  /** Draw into visible figures, creating the charts the first time. */
  draw() {
    if (!this.samples) return;
    for (const spec of CHARTS) {
      const body = this.root.querySelector(`[data-testid="${spec.testid}"] .chart-body`);
      const width = Math.floor(body.clientWidth);
      if (width <= 0) continue;
      const data = columns(this.samples, spec);
      const existing = this.charts.get(spec.testid);
      if (existing) {
        existing.plot.setData(data);
      } else {
        this.charts.set(spec.testid, { plot: new uPlot(options(spec, width), data, body), body, spec });
      }
    }
  }

  /** Drop every chart and draw again (new colours for a new colour scheme). */
  rebuild() {
    for (const { plot } of this.charts.values()) plot.destroy();
    this.charts.clear();
    this.draw();
  }

  scheduleResize() {
    if (this.frame) return;
    this.frame = window.requestAnimationFrame(() => {
      this.frame = 0;
      for (const { plot, body } of this.charts.values()) {
        const width = Math.floor(body.clientWidth);
        if (width > 0 && width !== plot.width) plot.setSize({ width, height: HEIGHT });
      }
      if (this.charts.size < CHARTS.length) this.draw();
    });
  }
}
